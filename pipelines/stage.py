"""A job is a list of named stages. Each stage maps typed records to typed records (one Arrow schema each,
see ``schemas/arrow.py``) and declares its resources; ``apply`` turns it into a Ray Data step.

    Stage("ingest", IngestStage, takes=InputItem, gives=UnitResult, resources=Resources(num_cpus=1, actors=4))

``fn`` is a ``StageFn`` class. Its ``setup()`` loads what the stage needs once (a model) and its
``__call__(records)`` maps one batch: any number of records out per record in. ``params`` reaches the
instance as ``self.params``. An actor stage (``actors`` > 0) builds the class once per actor, which keeps a
model (and its GPU memory) for the whole pass; a task stage builds it once per worker process and keeps
it there for later tasks, which suits small CPU models (silero-vad): no actor pool to start per pass.
Ray is given no constructor arguments: the stage travels inside the adapter that Ray runs.

Actor stages run with ``max_restarts=0``. Ray Data keeps the pool's setup in the object store, and Ray
warns about restarting such actors (ray-project/ray#53727); instead of restarting an actor, a pass whose
actor died is rerun by ``run_pass``, and every unit that finished before is skipped by its marker.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pyarrow as pa

from schemas import arrow


@dataclasses.dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors: int = 0            # > 0: a pool of up to this many actors; 0: Ray tasks
    batch_size: int = 1
    tasks: int = 0             # task stages: at most this many in flight (0: as Ray Data sees fit)


class StageFn:
    """What a stage runs. Subclasses set up in ``setup`` and map a batch of records in ``__call__``."""

    params: Any = None

    def setup(self) -> None:
        pass

    def __call__(self, records: list[Any]) -> list[Any]:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    fn: type[StageFn]
    takes: type
    gives: type
    resources: Resources = Resources()
    params: Any = None

    def build(self) -> StageFn:
        impl = self.fn()
        impl.params = self.params
        impl.setup()
        return impl

    def map_table(self, impl: StageFn, table: pa.Table) -> pa.Table:
        out = impl(arrow.from_table(self.takes, table))
        return arrow.to_table(out, self.gives)


class _ActorAdapter:
    stage: ClassVar[Stage]

    def __init__(self) -> None:
        self.impl = self.stage.build()

    def __call__(self, table: pa.Table) -> pa.Table:
        return self.stage.map_table(self.impl, table)


_BUILT: dict[bytes, StageFn] = {}    # per worker process: task stages set up once, like an actor


def _task_adapter(stage: Stage) -> Callable[[pa.Table], pa.Table]:
    import pickle

    key = stage.name.encode() + b"\0" + pickle.dumps((stage.fn, stage.params))

    def run(table: pa.Table) -> pa.Table:
        impl = _BUILT.get(key)
        if impl is None:
            impl = _BUILT[key] = stage.build()
        return stage.map_table(impl, table)

    run.__name__ = run.__qualname__ = stage.name
    return run


def apply(ds, stage: Stage):
    """``ds`` (rows of ``stage.takes``) → rows of ``stage.gives``."""
    import ray

    r = stage.resources
    kwargs: dict[str, Any] = {"batch_size": r.batch_size, "batch_format": "pyarrow", "num_cpus": r.num_cpus}
    if r.num_gpus:
        kwargs["num_gpus"] = r.num_gpus
    if r.actors:
        adapter = type(stage.name, (_ActorAdapter,), {"stage": stage})
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for max_restarts yet, and warns that the generic one will go.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            return ds.map_batches(adapter, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=r.actors),
                                  max_restarts=0, **kwargs)
    if r.tasks:
        kwargs["compute"] = ray.data.TaskPoolStrategy(size=r.tasks)
    return ds.map_batches(_task_adapter(stage), **kwargs)


def dataset(records: list[Any], cls: type, weights: list[float] | None = None, blocks: int | None = None):
    """A Ray Dataset of ``records`` in order. Without ``blocks``, one block per record. With ``blocks``,
    consecutive records are grouped into about that many blocks of equal total ``weight`` (a heavy record
    alone in its block), so small records share a task's overhead and a pool still shares out the work."""
    import ray

    if not records:
        return ray.data.from_arrow(arrow.to_table(records, cls))
    bounds = block_bounds(weights or [1.0] * len(records), blocks or len(records))
    # Each block goes to the object store as it is made: the driver holds one block's rows at a time, where
    # a table of every record (with a row dict each on the way) would cost it memory that grows with the list.
    return ray.data.from_arrow_refs([ray.put(arrow.to_table(records[a:b], cls)) for a, b in zip(bounds, bounds[1:])])


def block_count(n: int, workers: int) -> int:
    """Blocks for ``n`` work items: a few per worker, so the per-task overhead and the idle tail stay small,
    and about 8 items each on a long list, so progress moves and whoever puts or reads a block (the driver)
    holds a few items' records at a time, however long the list."""
    return min(n, max(4 * workers, n // 8))


def block_bounds(weights: list[float], blocks: int) -> list[int]:
    """Cut points for consecutive groups of about ``sum(weights) / blocks`` each: [3, 1, 1, 1], 2 → [0, 1, 4]."""
    target = sum(weights) / max(1, blocks)
    bounds, acc = [0], 0.0
    for i, w in enumerate(weights):
        acc += w
        if acc >= target and i + 1 < len(weights):
            bounds.append(i + 1)
            acc = 0.0
    bounds.append(len(weights))
    return bounds


def records(ds, cls: type) -> Iterator[Any]:
    """The records a dataset yields, as they arrive."""
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        yield from arrow.from_table(cls, table)


class PassFailed(RuntimeError):
    """A pass kept losing workers after its retries."""


def run_pass(name: str, make: Callable[[], Any], cls: type, on_record: Callable[[Any], None], retries: int,
             say: Callable[[str], None]) -> None:
    """Run a pass (``make()`` builds its dataset from the work still to do), handing each output record to
    ``on_record``; a pass that loses an actor or a node is rebuilt and rerun up to ``retries`` times."""
    import ray.exceptions

    lost = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.NodeDiedError,
            ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)
    for attempt in range(retries + 1):
        try:
            for rec in records(make(), cls):
                on_record(rec)
            return
        except lost as e:
            if attempt == retries:
                raise PassFailed(f"{name}: workers kept dying ({type(e).__name__}); finished work is kept, "
                                 "rerun to continue") from e
            say(f"{name}: a worker died ({type(e).__name__}); rerunning what is left")
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, BaseException) else None
            if isinstance(cause, lost) and attempt < retries:
                say(f"{name}: a worker died ({type(cause).__name__}); rerunning what is left")
                continue
            raise


def resumable_pass(name: str, todo: list[Any], key: Callable[[Any], str], make: Callable[[list[Any]], Any],
                   gives: type, owner: Callable[[Any], str], on_done: Callable[[Any, list[Any]], None],
                   retries: int, say: Callable[[str], None], expect: Callable[[Any], int] = lambda _: 1,
                   on_record: Callable[[Any], None] | None = None) -> list[Any]:
    """The one shape of every resumable pass: ``make(left)`` builds the dataset of the work items not yet
    done, each output record belongs to the item ``owner(record)`` names (its ``key``), and once an item
    has its ``expect(item)`` records, ``on_done(item, records)`` keeps them (a marker, a file, a result).
    A pass that loses a worker is rebuilt from the items not done; what had come of those is dropped, as
    they are sent again whole. ``on_record`` sees each record as it comes (progress). Returns the items
    that never got all their records (none, unless a stage drops records)."""
    items = {key(t): t for t in todo}
    done: set[str] = set()
    pending: dict[str, list[Any]] = {}

    def on(rec: Any) -> None:
        k = owner(rec)
        if k in done:
            return
        got = pending.setdefault(k, [])
        got.append(rec)
        if on_record is not None:
            on_record(rec)
        if len(got) == expect(items[k]):
            done.add(k)
            on_done(items[k], pending.pop(k))

    def left():
        pending.clear()
        return make([t for t in todo if key(t) not in done])

    if todo:
        run_pass(name, left, gives, on, retries, say)
    return [t for t in todo if key(t) not in done]
