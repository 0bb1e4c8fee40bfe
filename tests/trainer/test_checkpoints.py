"""Pruning: the newest committed checkpoints stay, and nothing else in the folder is touched."""

from trainer.checkpoints import checkpoints, prune


def _folder(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step in (1, 2, 10, 3):
        (ckpts / f"step-{step:07d}").mkdir(parents=True)
        (ckpts / f"step-{step:07d}" / "state.pt").write_bytes(b"x")
    (ckpts / "step-0000011.tmp").mkdir()              # a save in progress: not a checkpoint yet
    (ckpts / "step-0000004").mkdir()                   # no state.pt: not a committed checkpoint
    (ckpts / "notes.txt").write_text("a user's file")
    return ckpts


def test_prune_keeps_the_newest_by_step_and_touches_nothing_else(tmp_path):
    ckpts = _folder(tmp_path)
    gone = prune(str(tmp_path), 2)
    assert sorted(p.rsplit("/", 1)[1] for p in gone) == ["step-0000001", "step-0000002"]
    assert [p.split("/")[-2] for p in checkpoints(str(tmp_path))] == ["step-0000010", "step-0000003"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["notes.txt", "step-0000003", "step-0000004", "step-0000010",
                                                       "step-0000011.tmp"]


def test_keep_zero_keeps_every_checkpoint(tmp_path):
    _folder(tmp_path)
    assert prune(str(tmp_path), 0) == [] and len(checkpoints(str(tmp_path))) == 4
