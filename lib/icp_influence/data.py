"""Examples, pools and their loaders (docs/design.md).

An :class:`Example` is one instruction-following record; a :class:`Pool` is an ordered,
id-unique collection of them. Loaders read Alpaca JSON/JSONL, the authors' text format
(``Instruction: … Input: … Response: …``) and Hugging Face ``datasets`` (lazy; never used
in tests). Malformed input raises :class:`~icp_influence.errors.DataFormatError` with the
file, line and field at fault.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, overload

import numpy as np

from .errors import DataFormatError, DuplicateIdError, EmptyPoolError
from .utils import atomic_write_text

REQUIRED_FIELDS = ("instruction", "output")
TEXT_FIELDS = ("instruction", "input", "output")


@dataclass(frozen=True)
class Example:
    """One instruction-following example.

    Attributes:
        id: unique identifier within its pool.
        instruction: the task statement.
        input: optional task input ("" when absent).
        output: the reference answer.
        task: optional family label (synthetic families, Alpaca categories, ...).
        meta: free-form metadata (e.g. ``{"noisy": True, "clean_output": "..."}``).
    """

    id: str
    instruction: str
    input: str = ""
    output: str = ""
    task: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("id", "instruction", "input", "output"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise DataFormatError(
                    f"Example field {name!r} must be a string, got {type(value).__name__} "
                    f"({value!r:.60}); convert it to text before building the example."
                )
        if not self.id:
            raise DataFormatError("Example id is empty; give every example a unique, non-empty id.")

    @property
    def prompt(self) -> str:
        """The instruction and input joined, as a user would read them."""
        return self.instruction if not self.input else f"{self.instruction}\n{self.input}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_output(self, output: str, **meta: Any) -> "Example":
        """A copy with another output (and extra metadata)."""
        return replace(self, output=output, meta={**self.meta, **meta})


class Pool(Sequence[Example]):
    """An ordered collection of examples with unique ids.

    Raises :class:`EmptyPoolError` when empty (unless ``allow_empty``) and
    :class:`DuplicateIdError` when two examples share an id.
    """

    def __init__(self, examples: Iterable[Example], *, name: str = "pool", allow_empty: bool = False):
        self.examples: list[Example] = list(examples)
        self.name = name
        if not self.examples and not allow_empty:
            raise EmptyPoolError(
                f"No examples in {name!r}: the pool is empty, and a pool needs at least one example. Check the file or the "
                "filter that produced it."
            )
        seen: dict[str, int] = {}
        for i, ex in enumerate(self.examples):
            if not isinstance(ex, Example):
                raise DataFormatError(f"{name} item {i} is a {type(ex).__name__}, not an Example.")
            if ex.id in seen:
                raise DuplicateIdError(
                    f"Duplicate id {ex.id!r} in the {name} (items {seen[ex.id]} and {i}); "
                    "ids must be unique — rename one or drop the duplicate."
                )
            seen[ex.id] = i
        self._index = seen

    # Sequence protocol
    def __len__(self) -> int:
        return len(self.examples)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> "Pool": ...
    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Pool(self.examples[i], name=self.name, allow_empty=True)
        return self.examples[i]

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __repr__(self) -> str:
        fams = self.families()
        return f"Pool({self.name!r}, n={len(self)}, families={len(fams)})"

    @property
    def ids(self) -> list[str]:
        return [ex.id for ex in self.examples]

    def by_id(self, id_: str) -> Example:
        try:
            return self.examples[self._index[id_]]
        except KeyError:
            raise DataFormatError(f"No example with id {id_!r} in the {self.name}.") from None

    def index_of(self, id_: str) -> int:
        return self._index[id_]

    def families(self) -> list[str]:
        """Sorted distinct task labels (``None`` excluded)."""
        return sorted({ex.task for ex in self.examples if ex.task is not None})

    def filter(self, fn=None, *, tasks: Iterable[str] | None = None, name: str | None = None) -> "Pool":
        """A sub-pool of the examples that pass ``fn`` and/or belong to ``tasks``."""
        keep = set(tasks) if tasks is not None else None
        out = [
            ex for ex in self.examples
            if (fn is None or fn(ex)) and (keep is None or ex.task in keep)
        ]
        return Pool(out, name=name or self.name)

    def subset(self, ids: Iterable[str], name: str | None = None) -> "Pool":
        return Pool([self.by_id(i) for i in ids], name=name or self.name)

    def take(self, indices: Iterable[int], name: str | None = None) -> "Pool":
        return Pool([self.examples[int(i)] for i in indices], name=name or self.name)

    def noisy_ids(self) -> list[str]:
        return [ex.id for ex in self.examples if ex.meta.get("noisy")]

    def to_jsonl(self, path: str | Path) -> None:
        """Write the pool as JSONL (atomically)."""
        text = "".join(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n" for ex in self.examples)
        atomic_write_text(path, text)


# ---------------------------------------------------------------- loaders

def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataFormatError(f"Data file {str(path)!r} does not exist; check the path.")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataFormatError(
            f"{path}: invalid UTF-8 at byte {e.start} (line {line}); re-save the file as UTF-8."
        ) from None


def example_from_record(rec: Any, *, where: str, default_id: str) -> Example:
    """Build an Example from an Alpaca-style dict, with errors that name ``where``."""
    if not isinstance(rec, dict):
        raise DataFormatError(f"{where}: expected a JSON object with 'instruction' and 'output', got {type(rec).__name__}.")
    missing = [f for f in REQUIRED_FIELDS if f not in rec]
    if missing:
        raise DataFormatError(
            f"{where}: missing field(s) {', '.join(map(repr, missing))}; every record needs "
            "'instruction' and 'output' ('input' is optional)."
        )
    for f in TEXT_FIELDS:
        if f in rec and rec[f] is not None and not isinstance(rec[f], str):
            raise DataFormatError(
                f"{where}: field {f!r} must be a string, got {type(rec[f]).__name__}; quote it in the file."
            )
    id_ = rec.get("id", default_id)
    meta = {k: v for k, v in rec.items() if k not in (*TEXT_FIELDS, "id", "task", "meta")}
    meta.update(rec.get("meta") or {})
    return Example(
        id=str(id_),
        instruction=rec["instruction"],
        input=rec.get("input") or "",
        output=rec["output"],
        task=rec.get("task"),
        meta=meta,
    )


def load_alpaca(path: str | Path, *, name: str | None = None) -> Pool:
    """Load Alpaca-format data: a JSON list, or JSONL (one object per line).

    Records need ``instruction`` and ``output``; ``input``, ``id`` and ``task`` are optional
    (ids default to ``"<stem>-<index>"``).
    """
    path = Path(path)
    text = _read_text(path)
    stem = path.stem
    records: list[tuple[str, Any]] = []
    if path.suffix == ".jsonl" or (not text.lstrip().startswith("[") and path.suffix != ".json"):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path} line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataFormatError(
                    f"{path}: line {lineno} is not valid JSON ({e.msg} at column {e.colno}); fix or remove that line."
                ) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(
                f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix the file."
            ) from None
        if not isinstance(data, list):
            raise DataFormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}.")
        records = [(f"{path}[{i}]", rec) for i, rec in enumerate(data)]
    examples = [
        example_from_record(rec, where=where, default_id=f"{stem}-{i}")
        for i, (where, rec) in enumerate(records)
    ]
    return Pool(examples, name=name or stem)


_PAPER_RE = re.compile(
    r"^Instruction:\s?(?P<instruction>.*?)\n(?:Input:\s?(?P<input>.*?)\n)?Response:\s?(?P<output>.*)$",
    re.S,
)


def format_paper_text(ex: Example, with_output: bool = True) -> str:
    """The authors' text format: ``Instruction: …\\nInput: …\\nResponse: …``.

    The ``Input:`` line is omitted when the input is empty. Without the output, the text
    ends at ``Response:`` (the answer is appended as a continuation).
    """
    parts = [f"Instruction: {ex.instruction}"]
    if ex.input:
        parts.append(f"Input: {ex.input}")
    head = "\n".join(parts) + "\nResponse:"
    return f"{head} {ex.output}" if with_output else head


def parse_paper_text(block: str, *, id_: str, where: str = "text") -> Example:
    """Parse one ``Instruction: … Input: … Response: …`` block into an Example."""
    m = _PAPER_RE.match(block.strip("\n"))
    if not m:
        raise DataFormatError(
            f"{where}: block does not follow 'Instruction: …\\nInput: …\\nResponse: …' "
            f"(starts with {block.strip()[:40]!r}); check the separators."
        )
    return Example(id=id_, instruction=m["instruction"].strip(), input=(m["input"] or "").strip(),
                   output=m["output"].strip())


def load_paper_text(path: str | Path, *, separator: str = "\n\n\n", name: str | None = None) -> Pool:
    """Load the authors' text format: blocks separated by ``separator`` (blank lines)."""
    path = Path(path)
    text = _read_text(path)
    blocks = [b for b in text.split(separator) if b.strip()]
    examples = [
        parse_paper_text(b, id_=f"{path.stem}-{i}", where=f"{path} block {i + 1}")
        for i, b in enumerate(blocks)
    ]
    return Pool(examples, name=name or path.stem)


def load_hf_dataset(name: str = "tatsu-lab/alpaca", split: str = "train", limit: int | None = None) -> Pool:  # pragma: no cover - needs the hub
    """Load an Alpaca-style dataset from the Hugging Face hub (needs ``datasets`` and network)."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise DataFormatError("Loading from the hub needs `pip install datasets` (or `.[hub]`).") from None
    from .errors import HubUnreachableError

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types
        raise HubUnreachableError(
            f"Could not load {name!r} from the hub ({type(e).__name__}: {e}). Without network, "
            "download it elsewhere and use load_alpaca(path)."
        ) from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return Pool(
        [example_from_record(dict(r), where=f"{name}[{i}]", default_id=f"alpaca-{i}") for i, r in enumerate(ds)],
        name=name,
    )


def add_label_noise(pool: Pool, fraction: float, seed: int = 0) -> Pool:
    """Corrupt ``fraction`` of the outputs; record which in ``meta``.

    A corrupted example takes the output of another example of the same family (or of
    the pool when it has no family) that differs from its own, so the answer stays
    plausible but is wrong. Marked with ``meta["noisy"] = True`` and
    ``meta["clean_output"]``. Deterministic given ``seed``.
    """
    from .errors import ConfigError

    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"label-noise fraction must be in [0, 1], got {fraction}.")
    rng = np.random.default_rng(seed)
    n_noisy = int(round(fraction * len(pool)))
    chosen = set(rng.choice(len(pool), size=n_noisy, replace=False).tolist()) if n_noisy else set()
    by_family: dict[Any, list[str]] = {}
    for ex in pool:
        by_family.setdefault(ex.task, []).append(ex.output)
    out = []
    for i, ex in enumerate(pool):
        if i in chosen:
            options = sorted({o for o in by_family[ex.task] if o != ex.output}) or sorted(
                {e.output for e in pool if e.output != ex.output}
            )
            if not options:
                options = [ex.output[::-1] + "?"]
            wrong = options[int(rng.integers(len(options)))]
            out.append(ex.with_output(wrong, noisy=True, clean_output=ex.output))
        else:
            out.append(ex)
    return Pool(out, name=pool.name)
