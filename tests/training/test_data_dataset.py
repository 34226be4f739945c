"""Reading prepared datasets (`TokenDataset`, `DatasetManifest`) and the embedded default corpus."""

from __future__ import annotations

import json
import pickle
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data import (
    DataError,
    DatasetManifest,
    TokenDataset,
    default_corpus_sources,
    ensure_default_dataset,
    load_tokenizer,
    prepare_dataset,
)

SHARD_TOKENS = 97  # small and prime, so slices meet shard boundaries at odd places


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenDataset, np.ndarray, np.ndarray]:
    """A byte-level dataset in many small shards, with its train and holdout streams in full."""
    root = tmp_path_factory.mktemp("sharded")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"{i:02d}.txt").write_text(f"document {i}: " + "lorem ipsum dolor sit amet " * (i % 7 + 1))
    prepare_dataset(
        [corpus],
        root / "out",
        tokenizer="bytes",
        holdout_fraction=0.2,
        shard_tokens=SHARD_TOKENS,
        progress=False,
    )
    data = TokenDataset.open(root / "out", verify=True)
    train = np.concatenate(
        [np.fromfile(root / "out" / s.file, dtype="<u2") for s in data.manifest.shards_of("train")]
    ).astype(np.int64)
    holdout = np.concatenate(
        [np.fromfile(root / "out" / s.file, dtype="<u2") for s in data.manifest.shards_of("holdout")]
    ).astype(np.int64)
    return data, train, holdout


def test_slices_cross_shard_boundaries(sharded: tuple[TokenDataset, np.ndarray, np.ndarray]) -> None:
    data, train, holdout = sharded
    assert len(data.manifest.shards_of("train")) > 5 and len(data.manifest.shards_of("holdout")) > 1
    assert data.num_train_tokens == train.size and data.num_holdout_tokens == holdout.size
    across = data.train_slice(SHARD_TOKENS - 3, 2 * SHARD_TOKENS + 10)  # spans three shards
    assert across.dtype == np.int64
    np.testing.assert_array_equal(across, train[SHARD_TOKENS - 3 : 3 * SHARD_TOKENS + 7])
    np.testing.assert_array_equal(data.train_slice(0, train.size), train)
    np.testing.assert_array_equal(data.holdout_slice(5, holdout.size - 5), holdout[5:])
    assert data.train_slice(train.size, 0).size == 0


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 10**4), length=st.integers(0, 10**4))
def test_any_slice_inside_the_stream_equals_the_concatenated_shards(
    sharded: tuple[TokenDataset, np.ndarray, np.ndarray], start: int, length: int
) -> None:
    data, train, _ = sharded
    start %= train.size + 1
    length %= train.size - start + 1
    np.testing.assert_array_equal(data.train_slice(start, length), train[start : start + length])


def test_slices_are_copies(sharded: tuple[TokenDataset, np.ndarray, np.ndarray]) -> None:
    data, train, _ = sharded
    piece = data.train_slice(0, 10)
    piece[:] = -1
    np.testing.assert_array_equal(data.train_slice(0, 10), train[:10])


@pytest.mark.parametrize(("start", "length"), [(-1, 5), (0, -1), (10**9, 1), (0, 10**9)])
def test_slices_outside_the_stream_are_refused(
    sharded: tuple[TokenDataset, np.ndarray, np.ndarray], start: int, length: int
) -> None:
    data, _, _ = sharded
    with pytest.raises(DataError) as caught:
        data.train_slice(start, length)
    assert caught.value.code == "out_of_range"
    with pytest.raises(DataError):
        data.holdout_slice(data.num_holdout_tokens - 1, 2)


def test_a_dataset_pickles_without_its_tokens(sharded: tuple[TokenDataset, np.ndarray, np.ndarray]) -> None:
    data, train, _ = sharded
    blob = pickle.dumps(data)
    assert len(blob) < 10_000
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.train_slice(90, 20), train[90:110])


def copy_dataset(data: TokenDataset, to: Path) -> Path:
    to.mkdir()
    for path in data.root.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    return to


def test_verify_detects_a_changed_shard(sharded: tuple[TokenDataset, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    data, _, _ = sharded
    copy = copy_dataset(data, tmp_path / "copy")
    shard = copy / "train_00002.bin"
    content = bytearray(shard.read_bytes())
    content[7] ^= 1
    shard.write_bytes(bytes(content))
    TokenDataset.open(copy)  # same size: only the hash can tell
    with pytest.raises(DataError) as caught:
        TokenDataset.open(copy, verify=True)
    assert caught.value.code == "hash_mismatch" and "train_00002.bin" in str(caught.value)


def test_a_truncated_or_missing_shard_is_refused_on_open(
    sharded: tuple[TokenDataset, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    data, _, _ = sharded
    copy = copy_dataset(data, tmp_path / "copy")
    shard = copy / "holdout_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError) as caught:
        TokenDataset.open(copy)
    assert caught.value.code == "bad_shard"
    shard.unlink()
    with pytest.raises(DataError) as caught:
        TokenDataset.open(copy)
    assert caught.value.code == "bad_shard"


def test_a_folder_without_a_manifest_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        TokenDataset.open(tmp_path)
    assert caught.value.code == "not_a_dataset" and "commonweights data prepare" in str(caught.value)


def test_manifest_round_trips_through_json(sharded: tuple[TokenDataset, np.ndarray, np.ndarray]) -> None:
    data, _, _ = sharded
    assert DatasetManifest.from_json(data.manifest.to_json()) == data.manifest


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.update(format_version=2),
        lambda m: m.update(train_tokens=m["train_tokens"] + 1),
        lambda m: m["shards"][0].update(file="../../etc/passwd"),
        lambda m: m["shards"][0].update(split="holdout"),
        lambda m: m["shards"][0].update(sha256="abc"),
        lambda m: m["shards"][0].update(tokens=-1),
        lambda m: m.update(dtype="uint32"),
        lambda m: m.update(eos_id=m["vocab_size"]),
        lambda m: m.update(tokenizer="sentencepiece"),
        lambda m: m.pop("documents"),
        lambda m: m.update(documents=True),
    ],
)
def test_an_inconsistent_manifest_is_refused(
    sharded: tuple[TokenDataset, np.ndarray, np.ndarray], tamper: object
) -> None:
    data, _, _ = sharded
    raw = json.loads(data.manifest.to_json())
    tamper(raw)  # type: ignore[operator]
    with pytest.raises(DataError) as caught:
        DatasetManifest.from_json(json.dumps(raw))
    assert caught.value.code == "bad_manifest"


@pytest.mark.parametrize("text", ["not json", "[]", '{"format_version": 1}'])
def test_a_malformed_manifest_is_refused(text: str) -> None:
    with pytest.raises(DataError) as caught:
        DatasetManifest.from_json(text)
    assert caught.value.code == "bad_manifest"


def test_a_bad_tokenizer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    for content in ("{", '{"type": "mystery"}', '{"model": {"type": "nonsense"}}'):
        path.write_text(content)
        with pytest.raises(DataError) as caught:
            load_tokenizer(path)
        assert caught.value.code == "bad_tokenizer_file"


def test_data_error_keeps_its_code_through_pickle() -> None:
    error = pickle.loads(pickle.dumps(DataError("hash_mismatch", "the shard is corrupt")))
    assert (error.code, str(error)) == ("hash_mismatch", "the shard is corrupt")


# --- the embedded default corpus --------------------------------------------------------------


def test_default_corpus_is_the_standard_library_without_tests() -> None:
    files = default_corpus_sources()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert len(files) > 100
    assert files == sorted(files, key=lambda p: p.relative_to(stdlib).parts)
    assert all(p.suffix == ".py" and p.is_relative_to(stdlib) for p in files)
    parts = {part for p in files for part in p.relative_to(stdlib).parts[:-1]}
    assert not parts & {"test", "tests", "site-packages", "idlelib", "__pycache__"}
    assert stdlib / "os.py" in files


def test_default_dataset_prepares_once_round_trips_text_and_rebuilds_when_broken(tmp_path: Path) -> None:
    path = ensure_default_dataset(tmp_path, max_bytes=150_000, vocab_size=512, progress=False)
    assert path.parent == tmp_path / "datasets" and path.name.startswith("stdlib-")
    data = TokenDataset.open(path, verify=True)
    assert data.manifest.tokenizer == "bpe" and data.vocab_size == 512
    assert data.manifest.corpus_bytes == 150_000
    assert data.num_train_tokens > 20_000 and data.num_holdout_tokens > 0
    assert "standard library" in data.manifest.source

    tok = data.tokenizer()
    text = 'def greet(name: str) -> str:\n    return f"héllo {name} 🙂 <|endoftext|>"\r\n'
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text.encode())  # BPE learned something
    assert tok.eos_id not in tok.encode(text)
    opening = tok.decode(data.train_slice(0, 200).tolist())  # real stdlib source, in sorted order
    assert len(opening) > 300
    assert opening in "".join(p.read_text(encoding="utf-8") for p in default_corpus_sources()[:5])

    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert ensure_default_dataset(tmp_path, max_bytes=150_000, vocab_size=512, progress=False) == path
    assert (path / "manifest.json").stat().st_mtime_ns == stamp  # reused, not prepared again

    (path / "train_00000.bin").write_bytes(b"\x00\x00" * data.num_train_tokens)  # corrupt it
    assert ensure_default_dataset(tmp_path, max_bytes=150_000, vocab_size=512, progress=False) == path
    TokenDataset.open(path, verify=True)
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == [path.name]

    other = ensure_default_dataset(tmp_path, max_bytes=100_000, vocab_size=512, progress=False)
    assert other != path
