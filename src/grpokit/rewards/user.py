"""The user's own reward functions: config entries by import path and the call forms accepted.

An import path is `module:function` or `path/file.py:function` (docs/rewards.md, "Your own
reward function"). A relative file, or a module not found on sys.path, is searched in the
folders of the config files loaded (the latest first) and then in the working directory.

Two call forms, told apart by the signature (`form_of`):
- per-sample (grpokit's): the first parameter is named `sample` or annotated `Sample`;
  `fn(sample, **args) -> value`.
- batch (TRL's): every other function that takes `completions` by keyword (or **kwargs);
  `fn(completions=[...], prompts=[...], completion_ids=[...], **columns, **args) -> [values]`.
Either may be `async`: it is awaited in the runner's thread, one event loop per batch.

Everything here raises ValueError naming the entry; the caller turns it into a ConfigError
(exit 2) before anything is written.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import re
import sys
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from grpokit.rewards.base import RewardValue, Sample

# Folders of the config files loaded, the latest first (searched before the working directory).
_CONFIG_DIRS: list[Path] = []
# Files loaded by path: absolute path -> module (each file is executed once per process).
_FILES: dict[str, ModuleType] = {}
# The batch form's own inputs; every other row key is passed as a column of that name.
_INPUTS = ("completions", "prompts", "completion_ids")
_P = inspect.Parameter


def note_config_dir(folder: str | Path) -> None:
    """Search `folder` first for the relative import paths of the rewards (load_config calls this
    with the config file's folder)."""
    folder = Path(folder).resolve()
    if folder in _CONFIG_DIRS:
        _CONFIG_DIRS.remove(folder)
    _CONFIG_DIRS.insert(0, folder)


def search_dirs() -> list[Path]:
    """Where relative files and unknown modules are looked for, in order."""
    return list(dict.fromkeys([*_CONFIG_DIRS, Path.cwd().resolve()]))


def is_import_path(name: str) -> bool:
    """A config entry's name that is an import path (`module:attr`, `file.py:attr`)."""
    return ":" in name


def _split(entry: str) -> tuple[str, str]:
    where, _, attr = entry.rpartition(":")
    if not where.strip() or not attr.strip():
        raise ValueError(f"reward {entry!r}: an import path is module:function or "
                         "path/file.py:function")
    return where.strip(), attr.strip()


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def locate(entry: str) -> str:
    """The entry as an import path a fresh process resolves the same way (the worker of an
    isolated function): a file made absolute; a module as it is (its folder is on sys.path,
    which the worker inherits). Loads it, so every error is raised here."""
    where, attr = _split(entry)
    load(entry)
    return f"{_find_file(where, entry)}:{attr}" if _is_file(where) else entry


def load(entry: str) -> Callable[..., Any]:
    """The callable an import path names (ValueError naming the entry when it cannot be had)."""
    obj = load_object(entry)
    if not callable(obj):
        attr = _split(entry)[1]
        raise ValueError(f"reward {entry!r}: {attr} is a {type(obj).__name__}, not a function")
    return obj


def load_object(entry: str, kind: str = "reward") -> Any:
    """The object an import path names: a reward function, or (`kind`) an environment or a
    tool, whose errors then name it as such. Searched as the module docstring says."""
    try:
        where, attr = _split(entry)
        module = _load_file(_find_file(where, entry), entry) if _is_file(where) else \
            _import_module(where, entry)
        obj: Any = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                names = [n for n in dir(obj) if not n.startswith("_")]
                close = difflib.get_close_matches(part, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"reward {entry!r}: {where} has no attribute {part!r}{hint}")
            obj = getattr(obj, part)
        return obj
    except ValueError as exc:
        if kind == "reward":
            raise
        raise ValueError(str(exc).replace(f"reward {entry!r}", f"{kind} {entry!r}", 1)) from None


def _find_file(where: str, entry: str) -> Path:
    path = Path(where).expanduser()
    dirs = [] if path.is_absolute() else search_dirs()
    for candidate in [path] if path.is_absolute() else [d / path for d in dirs]:
        if candidate.is_file():
            return candidate.resolve()
    searched = f" (searched {', '.join(map(str, dirs))})" if dirs else ""
    raise ValueError(f"reward {entry!r}: no file {where}{searched}")


def _load_file(path: Path, entry: str) -> ModuleType:
    key = str(path)
    if key in _FILES:
        return _FILES[key]
    # A name of its own per path: two rewards.py files never replace each other in sys.modules.
    stem = re.sub(r"\W", "_", path.stem)
    name = f"grpokit_user_{stem}_{zlib.crc32(key.encode()):08x}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:  # the file's own imports of its neighbours
        sys.path.append(str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        _raise_import_error(exc, entry, str(path))
    _FILES[key] = module
    return module


def _import_module(where: str, entry: str) -> ModuleType:
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (where == exc.name or where.startswith(exc.name + ".")):
            _raise_import_error(exc, entry, where)  # a module it imports is missing
    except BaseException as exc:
        _raise_import_error(exc, entry, where)
    relative = Path(*where.split("."))
    for folder in search_dirs():
        if (folder / relative).with_suffix(".py").is_file() or (folder / relative).is_dir():
            if str(folder) not in sys.path:
                sys.path.append(str(folder))  # the worker of an isolated function inherits it
            importlib.invalidate_caches()
            try:
                return importlib.import_module(where)
            except BaseException as exc:
                _raise_import_error(exc, entry, where)
    searched = ", ".join(map(str, search_dirs()))
    raise ValueError(f"reward {entry!r}: no module named {where!r} (searched sys.path, {searched})")


def _raise_import_error(exc: BaseException, entry: str, what: str) -> None:
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    if isinstance(exc, SyntaxError):
        raise ValueError(f"reward {entry!r}: syntax error in {exc.filename}, line {exc.lineno}: "
                         f"{exc.msg}") from None
    raise ValueError(f"reward {entry!r}: importing {what} raised {type(exc).__name__}: {exc}"
                     ) from None


def importable_ref(fn: Any) -> str | None:
    """An import path that finds `fn` again in a fresh process, or None (defined in the script
    being run, inside a function, a lambda)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or not qualname or "<" in qualname:
        return None
    for path, loaded in _FILES.items():
        if loaded.__name__ == module:
            return f"{path}:{qualname}"
    found = sys.modules.get(module)
    return f"{module}:{qualname}" if found is not None and found.__spec__ is not None else None


def _signature(fn: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some built-in callables have none: taken as batch form
        return None


def _is_sample(param: inspect.Parameter) -> bool:
    annotation = param.annotation
    named = annotation is Sample or (isinstance(annotation, str)
                                     and annotation.rsplit(".", 1)[-1] == "Sample")
    return param.name == "sample" or named


def form_of(fn: Any, entry: str) -> str:
    """"sample" when the first parameter is named `sample` or annotated `Sample`; "batch" when
    the function takes `completions` by keyword (or **kwargs); else ValueError naming `entry`."""
    sig = _signature(fn)
    if sig is None:
        return "batch"
    params = list(sig.parameters.values())
    if params and params[0].kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD) \
            and _is_sample(params[0]):
        return "sample"
    if any(p.kind == _P.VAR_KEYWORD for p in params) or any(
            p.name == "completions" and p.kind != _P.POSITIONAL_ONLY for p in params):
        return "batch"
    raise ValueError(
        f"reward {entry!r}: the signature {sig} cannot take the batch: take `completions` "
        "(fn(completions, prompts=None, completion_ids=None, **columns) -> one value per "
        "completion) or one `sample: Sample` (fn(sample) -> one value)")


def is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))


def run_awaitable(awaitable: Any) -> Any:
    """Await in this thread (a fresh event loop); under a running loop (a notebook calling the
    runner directly), in a thread of its own."""
    import asyncio  # here: the config imports this module, and the CLI starts without asyncio
    import concurrent.futures

    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, wait()).result()


def _display_module(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "__main__"
    return next((path for path, m in _FILES.items() if m.__name__ == module), module)


class SampleReward:
    """grpokit's per-sample form `fn(sample, **args)`, sync or async."""

    user_function = True

    def __init__(self, name: str, fn: Callable[..., Any], args: dict[str, Any]):
        sig = _signature(fn)
        if sig is not None:
            try:  # bad args are an error when the function is built, not at its first sample
                sig.bind(None, **args)
            except TypeError as exc:
                raise ValueError(f"reward {name!r}: bad args {args!r}: {exc}") from None
        self.name, self._fn, self._args = name, fn, dict(args)
        self.__module__ = _display_module(fn)  # whose function it is, for the runner's warning
        self.required_columns: tuple[str, ...] = ()

    def score_one(self, sample: Sample) -> RewardValue:
        value = self._fn(sample, **self._args)
        return run_awaitable(value) if inspect.isawaitable(value) else value

    def __call__(self, samples: list[Sample]) -> list[RewardValue]:
        if not is_async(self._fn):
            return [self.score_one(sample) for sample in samples]

        import asyncio

        async def every() -> list[RewardValue]:  # the batch's samples concurrently
            return list(await asyncio.gather(*(self._fn(s, **self._args) for s in samples)))

        return run_awaitable(every())


class BatchReward:
    """TRL's batch form `fn(completions, prompts, completion_ids, **columns, **args)`, sync or
    async; a function without **kwargs gets only the keywords it names."""

    user_function = True

    def __init__(self, name: str, fn: Callable[..., Any], args: dict[str, Any]):
        self.name, self._fn, self._args = name, fn, dict(args)
        self.__module__ = _display_module(fn)
        sig = _signature(fn)
        params = [] if sig is None else list(sig.parameters.values())
        self._takes_all = sig is None or any(p.kind == _P.VAR_KEYWORD for p in params)
        self._names = {p.name for p in params if p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)}
        unknown = [k for k in args if not self._takes_all and k not in self._names]
        positional = [p.name for p in params if p.kind == _P.POSITIONAL_ONLY and p.default is _P.empty]
        if unknown or positional:
            what = f"takes no argument {unknown[0]!r}" if unknown else \
                f"has the positional-only parameter {positional[0]!r}"
            raise ValueError(f"reward {name!r}: the signature {sig} {what}: the batch form is "
                             "called with keywords only (completions, prompts, completion_ids, "
                             "the dataset's columns and the entry's args)")
        # Required parameters that are none of the inputs: dataset columns, checked against the
        # rows before training (RewardRunner.check_fields).
        self.required_columns = tuple(
            p.name for p in params if p.default is _P.empty and p.name not in _INPUTS
            and p.name not in args and p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY))

    def __call__(self, samples: list[Sample]) -> Any:
        inputs = batch_inputs(samples)
        inputs.update(self._args)
        if not self._takes_all:
            inputs = {k: v for k, v in inputs.items() if k in self._names}
        result = self._fn(**inputs)
        return run_awaitable(result) if inspect.isawaitable(result) else result


def conversational(row: dict[str, Any]) -> bool:
    """A chat row: its prompt is messages (a `messages` column, or a list as `prompt`)."""
    return "messages" in row or isinstance(row.get("prompt"), list)


def batch_inputs(samples: list[Sample]) -> dict[str, list[Any]]:
    """TRL's inputs: completions as strings (as one assistant message for chat rows), the row's
    prompt (text or messages), the completion token ids, and every row column as a list."""
    rows = [s.row for s in samples]
    chat = bool(rows) and conversational(rows[0])
    inputs: dict[str, list[Any]] = {
        "completions": [[{"role": "assistant", "content": s.completion}] if chat
                        else s.completion for s in samples],
        "prompts": [s.row.get("prompt", s.row.get("messages", s.prompt)) for s in samples],
        "completion_ids": [list(s.completion_ids) for s in samples],
    }
    for column in dict.fromkeys(key for row in rows for key in row):
        if column != "prompt" and column not in _INPUTS:
            inputs[column] = [row.get(column) for row in rows]
    return inputs


def adapt(name: str, fn: Callable[..., Any], args: dict[str, Any]) -> SampleReward | BatchReward:
    """The runner's batch protocol over a user function of either form (see `form_of`)."""
    form = form_of(fn, name)
    return SampleReward(name, fn, args) if form == "sample" else BatchReward(name, fn, args)


def build(entry: str, args: dict[str, Any]) -> SampleReward | BatchReward:
    """The reward function a config entry's import path names, checked and adapted."""
    return adapt(entry, load(entry), args)


def probe_samples(rows: list[dict[str, Any]], count: int = 2) -> list[Sample]:
    """Made-up completions of the first rows, to try user functions on before training: the
    row's answer when it has one (so a checker can agree), else "0"."""
    samples = []
    for row in rows[:count]:
        answer = row.get("answer")
        text = str(answer) if isinstance(answer, (str, int, float)) else "0"
        prompt = row.get("prompt") if isinstance(row.get("prompt"), str) else ""
        samples.append(Sample(completion=text, row=row, prompt=prompt, num_tokens=1,
                              completion_ids=(0,)))
    return samples
