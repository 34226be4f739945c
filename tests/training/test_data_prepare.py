"""`prepare_dataset` and `commonweights data prepare`: what goes in, what comes out, what is refused."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from commonweights.cli import main
from training.data import DataError, DatasetManifest, TokenDataset, prepare_dataset
from training.data import sources as sources_module
from training.data.split import HoldoutPlanner

WORDS = ("the", "a", "model", "learns", "from", "text", "volunteers", "idle", "computers", "train", "steps")


def sentence(rng: random.Random, words: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + ".\n"


def write_corpus(root: Path, documents: int = 24, seed: int = 0) -> list[str]:
    """A small mixed corpus (txt, md, py, jsonl) in `root`; returns every document's text."""
    rng = random.Random(seed)
    texts: list[str] = []
    (root / "notes").mkdir(parents=True)
    (root / "code").mkdir()
    lines = []
    for i in range(documents):
        text = "".join(sentence(rng) for _ in range(rng.randint(1, 6))) + f"Document {i}.\n"
        kind = i % 4
        if kind == 0:
            (root / "notes" / f"n{i:02d}.txt").write_text(text, encoding="utf-8")
        elif kind == 1:
            text = f"# Heading {i}\n\n{text}"
            (root / "notes" / f"m{i:02d}.md").write_text(text, encoding="utf-8")
        elif kind == 2:
            text = f"def f{i}(x):\n    '''{text.strip()}'''\n    return x * {i}\n"
            (root / "code" / f"p{i:02d}.py").write_text(text, encoding="utf-8")
        else:
            text = text + "Ünïcödé and emoji 🙂 survive.\n"
            lines.append(json.dumps({"text": text, "id": i}))
        texts.append(text)
    (root / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "image.png").write_bytes(b"\x89PNG\x00\x00 not read: unsupported suffix in a folder")
    (root / ".hidden.txt").write_text("hidden files are skipped", encoding="utf-8")
    return texts


def documents_of(stream: np.ndarray, eos: int) -> list[bytes]:
    """Split a byte-tokenizer stream into its documents (each ends with `eos`)."""
    assert stream.size == 0 or stream[-1] == eos
    ends = np.flatnonzero(stream == eos)
    starts = np.concatenate([[0], ends[:-1] + 1]) if ends.size else np.array([], dtype=np.int64)
    return [stream[s:e].astype(np.uint8).tobytes() for s, e in zip(starts, ends, strict=True)]


def split_documents(out: Path) -> tuple[list[str], list[str]]:
    data = TokenDataset.open(out, verify=True)
    train = documents_of(data.train_slice(0, data.num_train_tokens), data.manifest.eos_id)
    holdout = documents_of(data.holdout_slice(0, data.num_holdout_tokens), data.manifest.eos_id)
    return [d.decode() for d in train], [d.decode() for d in holdout]


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "manifest.json"}


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "corpus"
    return root, write_corpus(root)


# --- what comes out ---------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["bpe", "bytes"])
def test_prepares_a_mixed_corpus_whose_manifest_matches_its_shards(
    corpus: tuple[Path, list[str]], tmp_path: Path, tokenizer: str
) -> None:
    root, texts = corpus
    out = tmp_path / "out"
    manifest = prepare_dataset([root], out, tokenizer=tokenizer, vocab_size=300, progress=False)

    assert manifest.documents == len(texts)
    assert manifest == DatasetManifest.from_json((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == [
        "holdout_00000.bin",
        "manifest.json",
        "tokenizer.json",
        "train_00000.bin",
    ]
    assert manifest.dtype == "uint16"
    for shard in manifest.shards:
        content = (out / shard.file).read_bytes()
        assert len(content) == 2 * shard.tokens
        assert hashlib.sha256(content).hexdigest() == shard.sha256

    data = TokenDataset.open(out, verify=True)
    assert data.num_train_tokens == manifest.train_tokens > 0
    assert data.num_holdout_tokens == manifest.holdout_tokens > 0
    tok = data.tokenizer()
    assert tok.vocab_size == manifest.vocab_size == data.vocab_size
    everything = np.concatenate(
        [data.train_slice(0, data.num_train_tokens), data.holdout_slice(0, data.num_holdout_tokens)]
    )
    assert int(np.count_nonzero(everything == tok.eos_id)) == len(texts)
    assert everything.max() < tok.vocab_size
    # Every document comes back, byte for byte, through the saved tokenizer.
    decoded: set[str] = set()
    for stream in (
        data.train_slice(0, data.num_train_tokens),
        data.holdout_slice(0, data.num_holdout_tokens),
    ):
        ends = np.flatnonzero(stream == tok.eos_id)
        decoded.update(tok.decode(part.tolist()) for part in np.split(stream, ends + 1)[:-1])
    assert decoded == set(texts)


def test_bytes_tokenizer_uses_256_byte_ids_plus_eos(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, texts = corpus
    manifest = prepare_dataset([root], tmp_path / "out", tokenizer="bytes", progress=False)
    assert (manifest.vocab_size, manifest.eos_id) == (257, 256)
    total = sum(len(t.encode()) for t in texts)
    assert manifest.train_tokens + manifest.holdout_tokens == total + len(texts)
    assert json.loads((tmp_path / "out" / "tokenizer.json").read_text())["type"] == "commonweights-bytes"


def test_text_spelling_the_eos_token_is_not_an_eos(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    for i in range(4):
        (tmp_path / "c" / f"{i}.txt").write_text(f"x = '<|endoftext|>'  # {i} gpt-2 style\n" * 20)
    manifest = prepare_dataset([tmp_path / "c"], tmp_path / "out", vocab_size=300, progress=False)
    data = TokenDataset.open(tmp_path / "out")
    train = data.train_slice(0, data.num_train_tokens)
    holdout = data.holdout_slice(0, data.num_holdout_tokens)
    assert int((train == manifest.eos_id).sum() + (holdout == manifest.eos_id).sum()) == 4


def test_same_input_and_options_give_byte_identical_output(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = corpus
    first = prepare_dataset([root], tmp_path / "a", vocab_size=400, progress=False)
    second = prepare_dataset([root], tmp_path / "b", vocab_size=400, progress=False)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    assert first.shards == second.shards


def test_shards_roll_over_at_the_shard_size(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = corpus
    manifest = prepare_dataset([root], tmp_path / "out", tokenizer="bytes", shard_tokens=500, progress=False)
    train = manifest.shards_of("train")
    assert len(train) > 2
    assert [s.file for s in train] == [f"train_{i:05d}.bin" for i in range(len(train))]
    assert all(s.tokens == 500 for s in train[:-1]) and 0 < train[-1].tokens <= 500
    whole = prepare_dataset([root], tmp_path / "whole", tokenizer="bytes", progress=False)
    joined = b"".join((tmp_path / "out" / s.file).read_bytes() for s in train)
    assert joined == (tmp_path / "whole" / "train_00000.bin").read_bytes()
    assert whole.train_tokens == manifest.train_tokens


def test_a_file_larger_than_a_read_piece_is_still_one_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_module, "PIECE_BYTES", 64)
    rng = random.Random(1)
    big = "".join(sentence(rng, rng.randint(1, 30)) for _ in range(40)) + "no newline at the end é"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "big.txt").write_text(big, encoding="utf-8")
    (tmp_path / "c" / "small.txt").write_text("small\n", encoding="utf-8")
    # Half of two documents is a whole one: the split is by document (with fewer, by section: below).
    manifest = prepare_dataset(
        [tmp_path / "c"], tmp_path / "out", tokenizer="bytes", holdout_fraction=0.5, progress=False
    )
    assert manifest.documents == 2 and manifest.holdout_unit == "document"
    train, holdout = split_documents(tmp_path / "out")
    assert sorted(train + holdout) == sorted([big, "small\n"])


def test_too_few_documents_for_the_fraction_are_held_out_by_section_without_leaking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources_module, "PIECE_BYTES", 256)
    rng = random.Random(2)
    book = "".join(f"{i}: " + sentence(rng, rng.randint(3, 20)) for i in range(2000))  # unique lines
    (tmp_path / "book.txt").write_text(book, encoding="utf-8")
    manifest = prepare_dataset([tmp_path / "book.txt"], tmp_path / "out", tokenizer="bytes", progress=False)
    assert manifest.documents == 1 and manifest.holdout_unit == "section"
    assert 0 < manifest.holdout_tokens < 0.1 * (manifest.train_tokens + manifest.holdout_tokens)
    assert any("sections of about 64 KiB were held out" in w for w in manifest.warnings)
    train, holdout = split_documents(tmp_path / "out")
    # Every held-out run of text is the book's, none of it is in training, and nothing is lost.
    for run in holdout:
        assert run in book
        assert all(line not in "".join(train) for line in run.splitlines() if line)
    assert sum(map(len, train)) + sum(map(len, holdout)) == len(book)
    again = prepare_dataset([tmp_path / "book.txt"], tmp_path / "again", tokenizer="bytes", progress=False)
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "again"), "the same sections, every time"
    assert again.holdout_tokens == manifest.holdout_tokens


def test_max_bytes_stops_reading_after_that_much_text(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = corpus
    manifest = prepare_dataset([root], tmp_path / "out", tokenizer="bytes", max_bytes=1000, progress=False)
    assert manifest.corpus_bytes == 1000
    assert manifest.train_tokens + manifest.holdout_tokens == 1000 + manifest.documents


def test_jsonl_bad_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "good one"}\n\n[1, 2]\n{"title": "no text"}\n{"text": "good two"}\n{"text": "tru')
    manifest = prepare_dataset([path], tmp_path / "out", tokenizer="bytes", progress=False)
    assert manifest.documents == 2
    assert len(manifest.warnings) == 1
    assert "skipped 3 bad lines" in manifest.warnings[0] and "line 3" in manifest.warnings[0]


def test_a_few_stray_bad_bytes_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(("mostly fine text " * 100).encode() + b"caf\xe9 and a \x00 NUL\n")
    prepare_dataset([path], tmp_path / "out", tokenizer="bytes", progress=False)
    train, _ = split_documents(tmp_path / "out")
    assert train[0].endswith("caf\ufffd and a  NUL\n")


def test_progress_bars_run_without_error(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = corpus
    prepare_dataset([root], tmp_path / "out", tokenizer="bytes", progress=True)


# --- the holdout split ------------------------------------------------------------------------


def test_holdout_is_disjoint_by_document_and_does_not_depend_on_paths(tmp_path: Path) -> None:
    texts = [f"document number {i}\n" * (i % 5 + 1) for i in range(60)]
    first, second = tmp_path / "one", tmp_path / "two" / "nested"
    first.mkdir()
    second.mkdir(parents=True)
    for i, text in enumerate(texts):
        (first / f"{i:03d}.txt").write_text(text)
        (second / f"renamed_{59 - i:03d}.md").write_text(text)  # other names, other order
    prepare_dataset([first], tmp_path / "a", tokenizer="bytes", holdout_fraction=0.2, progress=False)
    prepare_dataset([second], tmp_path / "b", tokenizer="bytes", holdout_fraction=0.2, progress=False)
    train_a, holdout_a = split_documents(tmp_path / "a")
    _, holdout_b = split_documents(tmp_path / "b")
    assert not set(train_a) & set(holdout_a)
    assert sorted(train_a + holdout_a) == sorted(texts)
    assert 0 < len(holdout_a) < 30
    assert sorted(holdout_a) == sorted(holdout_b)


def test_duplicated_documents_land_on_the_same_side(tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"{i}.txt").write_text(f"text {i % 10}\n")  # each text four times
    prepare_dataset([tmp_path], tmp_path / "out", tokenizer="bytes", holdout_fraction=0.3, progress=False)
    train, holdout = split_documents(tmp_path / "out")
    assert holdout and not set(train) & set(holdout)


def test_two_documents_always_give_one_holdout_and_one_train(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "b.txt").write_text("beta\n")
    for fraction in (0.0001, 0.5):
        manifest = prepare_dataset(
            [tmp_path],
            tmp_path / f"out{fraction}",
            tokenizer="bytes",
            holdout_fraction=fraction,
            progress=False,
        )
        assert (manifest.documents, manifest.holdout_documents) == (2, 1)


def test_a_single_document_trains_and_the_empty_holdout_is_reported(tmp_path: Path) -> None:
    (tmp_path / "only.txt").write_text("the one document\n")
    manifest = prepare_dataset([tmp_path / "only.txt"], tmp_path / "out", tokenizer="bytes", progress=False)
    assert (manifest.documents, manifest.holdout_documents, manifest.holdout_tokens) == (1, 0, 0)
    assert any("nothing was held out" in w for w in manifest.warnings)


def test_holdout_fraction_zero_holds_out_nothing(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = corpus
    manifest = prepare_dataset([root], tmp_path / "out", tokenizer="bytes", holdout_fraction=0, progress=False)
    assert manifest.holdout_documents == manifest.holdout_tokens == 0
    assert manifest.shards_of("holdout") == ()


def test_holdout_planner_corrections() -> None:
    one = HoldoutPlanner(0.5)
    one.add(1)
    assert one.plan().cut == 0  # a single document trains
    same = HoldoutPlanner(0.5)
    same.add(7)
    same.add(7)
    assert same.plan().cut == 0  # identical documents cannot be split
    none_below = HoldoutPlanner(1e-9)
    for key in (2**62, 2**63, 2**60):
        none_below.add(key)
    split = none_below.plan()
    assert [split.is_holdout(k) for k in (2**62, 2**63, 2**60)] == [False, False, True]
    all_below = HoldoutPlanner(0.5)
    for key in (1, 2, 3):
        all_below.add(key)
    split = all_below.plan()
    assert [split.is_holdout(k) for k in (1, 2, 3)] == [True, True, False]


# --- refusing bad input -----------------------------------------------------------------------


def refused(code: str, sources: list[Path], out: Path, **options: object) -> DataError:
    with pytest.raises(DataError) as caught:
        prepare_dataset(sources, out, progress=False, **options)  # type: ignore[arg-type]
    assert caught.value.code == code, str(caught.value)
    assert not out.exists() or out.is_file() or any(out.iterdir())
    return caught.value


def test_no_sources_is_refused(tmp_path: Path) -> None:
    refused("no_sources", [], tmp_path / "out")


def test_empty_corpus_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "blank.txt").write_text("  \n\n\t")
    (tmp_path / "c" / "empty.md").write_text("")
    (tmp_path / "c" / "empty.jsonl").write_text('{"text": ""}\n')
    error = refused("empty_corpus", [tmp_path / "c"], tmp_path / "out")
    assert "no usable text" in str(error)
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "cat.jpg").write_bytes(b"\xff\xd8")
    assert ".txt" in str(refused("empty_corpus", [tmp_path / "pics"], tmp_path / "out"))


def test_missing_path_is_refused(tmp_path: Path) -> None:
    error = refused("unreadable", [tmp_path / "nope.txt"], tmp_path / "out")
    assert "nope.txt" in str(error)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("text")
    path.chmod(0)
    refused("unreadable", [path], tmp_path / "out")


def test_a_file_the_os_will_not_open_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.md"
    path.write_text("text")

    def denied(file: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(sources_module, "open", denied, raising=False)
    error = refused("unreadable", [path], tmp_path / "out")
    assert "locked.md" in str(error) and "Permission denied" in str(error)


def test_unsupported_file_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "paper.pdf"
    path.write_bytes(b"%PDF-1.4")
    refused("unsupported_file", [path], tmp_path / "out")


def test_binary_junk_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_bytes(random.Random(0).randbytes(4000))
    assert "junk.txt" in str(refused("binary", [junk], tmp_path / "out"))
    utf16 = tmp_path / "utf16.md"
    utf16.write_bytes("text saved as UTF-16 by an old editor\n".encode("utf-16") * 20)
    refused("binary", [utf16], tmp_path / "out")
    jsonl = tmp_path / "blob.jsonl"
    jsonl.write_bytes(b'{"text": "x"}\n' + b"\x00" * 100)
    refused("binary", [jsonl], tmp_path / "out")


def test_wholly_bad_jsonl_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('\n{"content": "wrong field"}\n{"text": 5}\n')
    error = refused("bad_jsonl", [path], tmp_path / "out")
    assert "docs.jsonl" in str(error) and "line 2" in str(error)


def test_out_dir_that_is_a_file_is_refused(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = corpus
    out = tmp_path / "out"
    out.write_text("I am a file")
    refused("bad_out_dir", [root], out)
    refused("bad_out_dir", [root], out / "below")


def test_out_dir_with_other_files_is_refused(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = corpus
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    refused("bad_out_dir", [root], out)
    assert (out / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(
    ("code", "options"),
    [
        ("bad_vocab_size", {"vocab_size": 259}),
        ("bad_vocab_size", {"vocab_size": 2**20 + 1}),
        ("bad_holdout_fraction", {"holdout_fraction": 0.9}),
        ("bad_holdout_fraction", {"holdout_fraction": float("nan")}),
        ("bad_max_bytes", {"max_bytes": 0}),
        ("bad_tokenizer", {"tokenizer": "wordpiece"}),
    ],
)
def test_options_out_of_range_are_refused(
    corpus: tuple[Path, list[str]], tmp_path: Path, code: str, options: dict[str, object]
) -> None:
    root, _ = corpus
    refused(code, [root], tmp_path / "out", **options)


# --- atomic output ----------------------------------------------------------------------------


def test_an_existing_dataset_is_replaced(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = corpus
    out = tmp_path / "out"
    prepare_dataset([root], out, tokenizer="bytes", shard_tokens=200, progress=False)
    manifest = prepare_dataset([root], out, tokenizer="bytes", progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "tokenizer.json", *(s.file for s in manifest.shards)]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]


def test_a_failed_run_leaves_the_previous_dataset_and_no_partial_files(
    corpus: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = corpus
    out = tmp_path / "out"
    prepare_dataset([root], out, tokenizer="bytes", progress=False)
    before = shard_bytes(out) | {"manifest.json": (out / "manifest.json").read_bytes()}

    from training.data import shards

    calls = 0
    real_write = shards.ShardWriter.write

    def crash_midway(self: shards.ShardWriter, tokens: np.ndarray) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(28, "No space left on device")
        real_write(self, tokens)

    monkeypatch.setattr(shards.ShardWriter, "write", crash_midway)
    with pytest.raises(DataError) as caught:
        prepare_dataset([root], out, tokenizer="bytes", shard_tokens=100, progress=False)
    assert caught.value.code == "write_failed"
    assert "No space left" in str(caught.value)
    assert shard_bytes(out) | {"manifest.json": (out / "manifest.json").read_bytes()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]


# --- the command line -------------------------------------------------------------------------


def test_cli_refuses_an_empty_corpus_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("\n")
    code = main(["data", "prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    assert "no usable text" in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


def test_cli_prepares_a_good_corpus_and_prints_a_summary(
    corpus: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, texts = corpus
    out = tmp_path / "out"
    code = main(["data", "prepare", str(root), "--out", str(out), "--vocab-size", "300", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"prepared {len(texts)} documents" in captured.out
    assert str(out) in captured.out and "bpe" in captured.out
    TokenDataset.open(out, verify=True)


def test_cli_with_no_sources_uses_the_embedded_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["data", "prepare", "--out", str(out), "--tokenizer", "bytes", "--max-bytes", "20000", "--quiet"])
    assert code == 0
    assert "standard library" in capsys.readouterr().out
    assert TokenDataset.open(out).manifest.corpus_bytes == 20000


def test_a_given_tokenizer_is_used_as_it_is(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    """How a volunteer's own files are prepared: with the campaign's tokenizer, not one trained on them."""
    root, _ = corpus
    campaign = prepare_dataset([root], tmp_path / "campaign", vocab_size=300, progress=False)
    own = tmp_path / "own"
    own.mkdir()
    (own / "notes.md").write_text("my private notes, never seen by the campaign's tokenizer\n" * 20)
    local = prepare_dataset(
        [own], tmp_path / "local", tokenizer_file=tmp_path / "campaign" / "tokenizer.json", progress=False
    )
    assert (tmp_path / "local" / "tokenizer.json").read_bytes() == (
        tmp_path / "campaign" / "tokenizer.json"
    ).read_bytes()
    assert (local.vocab_size, local.eos_id) == (campaign.vocab_size, campaign.eos_id)
    data = TokenDataset.open(tmp_path / "local", verify=True)
    tokens = data.train_slice(0, data.num_train_tokens)
    assert data.tokenizer().decode(tokens[tokens != local.eos_id].tolist()).startswith("my private notes")
    with pytest.raises(DataError) as refused:
        prepare_dataset([own], tmp_path / "bad", tokenizer_file=tmp_path / "missing.json", progress=False)
    assert refused.value.code == "unreadable"
