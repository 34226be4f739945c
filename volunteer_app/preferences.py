"""The volunteer's computing preferences (like BOINC's), validated, and stored as TOML.

    >>> prefs = Preferences(idle_minutes=5, time_windows=(TimeWindow.parse("22:00", "07:00"),))
    >>> prefs.time_windows[0].contains(time(23, 30))
    True

and to a file and back:

    save_preferences(prefs, path)
    load_preferences(path) == prefs   # True

The file lives in the user's config directory (`default_preferences_path()`: for example
~/.config/commonweights/preferences.toml). Keys this version does not know are kept in
`Preferences.extra` and written back unchanged, so a newer app's settings survive an older one; they
are also listed by `unknown_keys` so the settings dialog can mention them. Every invalid value raises
`PreferencesError` naming the field.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import platformdirs
import tomli_w

from training.atomic_write import write_atomically

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda", "mps"]
DEVICES: tuple[str, ...] = get_args(Device)
DEFAULT_COORDINATOR_URL = "http://127.0.0.1:8470"
APP_NAME = "commonweights"
FILE_NAME = "preferences.toml"

_MAX_IDLE_MINUTES = 24 * 60
_URL_SCHEMES = ("http", "https", "ws", "wss")
_HEADER = (
    "# Commonweights computing preferences. The app rewrites this file when settings change;\n"
    "# keys it does not know are kept as they are.\n\n"
)


class PreferencesError(ValueError):
    """An invalid preference: `field` names it ("idle_minutes", "time_windows[1]"), or is None for
    a file that cannot be read at all."""

    code = "preferences.invalid"

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def default_preferences_path() -> Path:
    """`<user config dir>/commonweights/preferences.toml`, per platformdirs."""
    return platformdirs.user_config_path(APP_NAME, appauthor=False) / FILE_NAME


def _parse_clock_time(text: object, where: str) -> time:
    if isinstance(text, time) and text.tzinfo is None:
        return text.replace(second=0, microsecond=0)
    if not isinstance(text, str):
        raise PreferencesError(where, f"must be a time written HH:MM, got {text!r}")
    hours, sep, minutes = text.strip().partition(":")
    if not (sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2 and len(hours) <= 2):
        raise PreferencesError(where, f"must be a time written HH:MM (24-hour), got {text!r}")
    h, m = int(hours), int(minutes)
    if h == 24 and m == 0:  # "24:00" is a natural way to say "until midnight"
        return time(0, 0)
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise PreferencesError(where, f"is not a time of day: {text!r}")
    return time(h, m)


@dataclass(frozen=True)
class TimeWindow:
    """Daily hours when work may run, start inclusive, end exclusive; may cross midnight."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if not (isinstance(self.start, time) and isinstance(self.end, time)):
            raise PreferencesError("time_windows", f"start and end must be times of day, got {self!r}")
        for name in ("start", "end"):  # minutes are the resolution of the file format
            t = getattr(self, name)
            object.__setattr__(self, name, t.replace(second=0, microsecond=0, tzinfo=None))
        if self.start == self.end:
            raise PreferencesError(
                "time_windows",
                f"window {self} starts and ends at the same time; remove the time windows to run at any hour",
            )

    @classmethod
    def parse(cls, start: object, end: object, where: str = "time_windows") -> TimeWindow:
        return cls(_parse_clock_time(start, f"{where}.start"), _parse_clock_time(end, f"{where}.end"))

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def contains(self, moment: time) -> bool:
        t = moment.replace(tzinfo=None)
        if self.crosses_midnight:
            return t >= self.start or t < self.end
        return self.start <= t < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}–{self.end:%H:%M}"

    def to_toml(self) -> list[str]:
        return [f"{self.start:%H:%M}", f"{self.end:%H:%M}"]


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise PreferencesError(name, f"must be true or false, got {value!r}")
    return value


def _number(name: str, value: object, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PreferencesError(name, f"must be {what}, got {value!r}")
    if not low <= value <= high:
        raise PreferencesError(name, f"must be {what}, got {value!r}")
    return float(value)


def _int(name: str, value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PreferencesError(name, f"must be {what}, got {value!r}")
    return value


def _optional_int(name: str, value: object, low: int, high: int, what: str) -> int | None:
    return None if value is None else _int(name, value, low, high, what)


MAX_EXCLUSIVE_PROGRAMS = 200
THEMES = ("system", "light", "dark")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise PreferencesError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _programs(name: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_EXCLUSIVE_PROGRAMS:
        raise PreferencesError(name, f"must be a list of at most {MAX_EXCLUSIVE_PROGRAMS} program names, got {value!r}")
    names = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip() or len(item) > 255 or "\0" in item:
            raise PreferencesError(f"{name}[{i}]", f"must be a program's name (1-255 characters), got {item!r}")
        names.append(item.strip())
    return tuple(dict.fromkeys(names))


def _gpus(name: str, value: Any) -> tuple[int, ...]:
    """GPU indexes, each once, in order; empty for every GPU."""
    if not isinstance(value, (list, tuple)) or any(type(i) is not int or not 0 <= i < 64 for i in value):
        raise PreferencesError(name, f"must be a list of GPU numbers from 0 to 63, got {value!r}")
    return tuple(sorted(set(value)))


_FIELD_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "idle_minutes": lambda n, v: _number(n, v, 0, _MAX_IDLE_MINUTES, "minutes between 0 and 1440"),
    "suspend_on_input": _bool,
    "run_on_battery": _bool,
    "cpu_cores": lambda n, v: _optional_int(n, v, 1, 4096, "a whole number of cores ≥ 1, or absent for all"),
    "cpu_percent": lambda n, v: _int(n, v, 1, 100, "a whole percentage from 1 to 100"),
    "suspend_other_cpu_percent": lambda n, v: _number(n, v, 0, 100, "a percentage from 0 (off) to 100"),
    "pause_above_celsius": lambda n, v: _number(n, v, 0, 120, "degrees Celsius from 0 (off) to 120"),
    "exclusive_programs": _programs,
    "suspend_while_fullscreen": _bool,
    "theme": lambda n, v: _choice(n, v, THEMES),
    "keep_awake_on_ac": _bool,
    "gpu_only_when_idle": _bool,
    "gpu_percent": lambda n, v: _int(n, v, 1, 100, "a whole percentage from 1 to 100"),
    "gpus": lambda n, v: _gpus(n, v),
    "gpu_memory_limit_mb": lambda n, v: _optional_int(
        n, v, 1, 1 << 24, "a whole number of MB ≥ 1, or absent for no limit"
    ),
    "network_mb_per_day": lambda n, v: _optional_int(
        n, v, 1, 1 << 30, "a whole number of MB per day ≥ 1, or absent for no cap"
    ),
    "autostart": _bool,
}


@dataclass(frozen=True)
class Preferences:
    """When and how much this computer may work. Construct, or `dataclasses.replace`, to validate."""

    idle_minutes: float = 3.0
    """Minutes without keyboard or mouse input before work starts (0: no wait)."""
    suspend_on_input: bool = True
    """Suspend within a second of input. Off: work runs even while the computer is in use."""
    run_on_battery: bool = False
    cpu_cores: int | None = None
    """Most CPU cores to use; None: all."""
    cpu_percent: int = 100
    """Share of CPU time to use on those cores (the worker throttles to it), 1–100."""
    suspend_other_cpu_percent: float = 25.0
    """Suspend while other programs use more than this % of the whole CPU; 0 turns the check off."""
    pause_above_celsius: float = 0.0
    """Suspend while the hottest CPU or GPU sensor reads this or more, until it has cooled by
    `PolicyTuning.heat_hysteresis_c`; 0 turns the check off."""
    exclusive_programs: tuple[str, ...] = ()
    """Programs that suspend work while any of them runs (BOINC's exclusive applications: games, editors),
    by executable name ("steam", "blender.exe"); case and ".exe" don't matter."""
    suspend_while_fullscreen: bool = True
    """Suspend while a window is full screen (a game, a film, a presentation)."""
    keep_awake_on_ac: bool = False
    """Keep the computer from sleeping while it trains on mains power (the display may still turn off)."""
    theme: str = "system"
    """The app's colours: "system" (follow the desktop's light or dark scheme), "light" or "dark"."""
    gpu_only_when_idle: bool = True
    """Use the GPU only while the user is away, even when `suspend_on_input` is off."""
    gpu_percent: int = 100
    """Share of time to train on the GPU, 1–100: the training process is suspended for the rest of each
    second (the process drives the GPU, so its GPU time follows)."""
    gpus: tuple[int, ...] = ()
    """Which GPUs may train, by number as `nvidia-smi` counts them; empty: all of them."""
    gpu_memory_limit_mb: int | None = None
    time_windows: tuple[TimeWindow, ...] = ()
    """Daily hours when work may run; empty: any hour. ("HH:MM", "HH:MM") pairs are accepted too."""
    network_mb_per_day: int | None = None
    """Most megabytes to download and upload per day; None: no cap."""
    coordinator_url: str = DEFAULT_COORDINATOR_URL
    device: Device = "auto"
    autostart: bool = False
    """Start the app when the user logs in."""
    snooze_until: datetime | None = None
    """Work is snoozed until this moment (timezone-aware; a naive value is taken as local time)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys this version does not know, kept for writing back."""

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise in place once, at construction
        for name, check in _FIELD_CHECKS.items():
            put(self, name, check(name, getattr(self, name)))
        put(self, "time_windows", _parse_windows(self.time_windows))
        self._check_url()
        if self.device not in DEVICES:
            raise PreferencesError("device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.snooze_until is not None:
            if not isinstance(self.snooze_until, datetime):
                raise PreferencesError("snooze_until", f"must be a date and time, got {self.snooze_until!r}")
            if self.snooze_until.tzinfo is None:
                put(self, "snooze_until", self.snooze_until.astimezone())
        clash = set(self.extra) & ({f.name for f in dataclasses.fields(self)} - {"extra"})
        if clash:
            raise PreferencesError("extra", f"holds known keys {sorted(clash)}")
        put(self, "extra", dict(self.extra))

    def _check_url(self) -> None:
        url = self.coordinator_url
        if not isinstance(url, str):
            raise PreferencesError("coordinator_url", f"must be text, got {url!r}")
        try:
            parts = urlsplit(url.strip())
            _ = parts.port  # raises on a malformed port
        except ValueError as exc:
            raise PreferencesError("coordinator_url", f"is not a valid URL ({exc}): {url!r}") from exc
        if parts.scheme not in _URL_SCHEMES or not parts.hostname:
            raise PreferencesError(
                "coordinator_url", f"must be an http(s):// or ws(s):// address with a host, got {url!r}"
            )
        object.__setattr__(self, "coordinator_url", url.strip())

    @property
    def unknown_keys(self) -> list[str]:
        return sorted(self.extra)

    @property
    def idle_seconds_required(self) -> float:
        return self.idle_minutes * 60.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preferences:
        """Build from a decoded TOML table; unknown keys go to `extra`."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        if isinstance(values.get("snooze_until"), str):
            try:
                values["snooze_until"] = datetime.fromisoformat(values["snooze_until"])
            except ValueError as exc:
                raise PreferencesError("snooze_until", f"is not a date and time: {values['snooze_until']!r}") from exc
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """A TOML-ready table: absent (None) values are left out, unknown keys come last."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            if f.name == "time_windows":
                value = [w.to_toml() for w in value]
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, float) and value.is_integer():
                value = int(value)
            out[f.name] = value
        out.update(self.extra)
        return out


def _parse_windows(raw: object) -> tuple[TimeWindow, ...]:
    """TimeWindows, or ["HH:MM", "HH:MM"] pairs as a file or a settings dialog gives them."""
    if not isinstance(raw, list | tuple):
        raise PreferencesError("time_windows", f'must be a list of ["HH:MM", "HH:MM"] pairs, got {raw!r}')
    windows = []
    for i, pair in enumerate(raw):
        where = f"time_windows[{i}]"
        if isinstance(pair, TimeWindow):
            windows.append(pair)
            continue
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise PreferencesError(where, f'must be a ["start", "end"] pair like ["22:00", "07:00"], got {pair!r}')
        try:
            windows.append(TimeWindow.parse(pair[0], pair[1], where))
        except PreferencesError as exc:
            if exc.field == "time_windows":  # equal ends: say which window
                raise PreferencesError(where, exc.message) from None
            raise
    return tuple(windows)


def load_preferences(path: Path | None = None) -> Preferences:
    """Read preferences from `path` (default: `default_preferences_path()`); defaults if absent."""
    target = path if path is not None else default_preferences_path()
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        return Preferences()
    except OSError as exc:
        raise PreferencesError(None, f"cannot read {target}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PreferencesError(None, f"{target} is not valid TOML: {exc}") from exc
    prefs = Preferences.from_dict(data)
    if prefs.unknown_keys:
        log.warning("%s: keeping unknown keys %s", target, ", ".join(prefs.unknown_keys))
    return prefs


def save_preferences(prefs: Preferences, path: Path | None = None) -> Path:
    """Write atomically (temporary file, fsync, rename), so a crash leaves the old or the new file."""
    target = path if path is not None else default_preferences_path()
    write_atomically(target, _HEADER + tomli_w.dumps(prefs.to_dict()))
    return target
