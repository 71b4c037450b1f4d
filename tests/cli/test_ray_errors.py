"""A raygram error raised inside a Ray task reaches the command line as its own one line.

Ray hands a task's exception to the driver as a `RayTaskError` (by default in the form
that also derives from the cause's class) whose text is the task's whole traceback. The
CLI must print only the cause's message and exit with the cause's code.
"""
import pytest
from ray.exceptions import RayTaskError

from raygram.cli import main as cli_main
from raygram.cli import store
from raygram.errors import CorruptTile, FingerprintMismatch, StoreError

TRACEBACK = ("Traceback (most recent call last):\n  File \"worker.py\", line 1, in run\n"
             "raygram.errors.CorruptTile: tile train_train[0,1] ...")


def task_error(cause: BaseException, dual: bool) -> RayTaskError:
    """What `ray.get` raises for a task that raised `cause` (plain, or as an instance of the cause's class too)."""
    error = RayTaskError("run", TRACEBACK, cause, proctitle="ray::GramWorker.run", pid=1, ip="127.0.0.1")
    return error.as_instanceof_cause() if dual else error


CAUSES = {
    "corrupt tile (exit 1)": (CorruptTile("tile train_train[0,1] of the store /s is corrupt (ntk chunk missing); "
                                          "run `raygram build --verify`"), 1, "raygram: failed: tile train_train[0,1]"),
    "store error (exit 2)": (StoreError("no Gram store at /s"), 2, "raygram: error: no Gram store at /s"),
    "fingerprint table (exit 2)": (FingerprintMismatch("built for other settings:\n  dtype: store has 1"), 2,
                                   "raygram: error: built for other settings: dtype: store has 1"),
}


@pytest.mark.parametrize("dual", [False, True], ids=["RayTaskError", "as_instanceof_cause"])
@pytest.mark.parametrize("nested", [False, True], ids=["task", "task in a task"])
@pytest.mark.parametrize("case", list(CAUSES))
def test_a_raygram_error_in_a_ray_task_prints_its_cause_only(case, dual, nested, monkeypatch, capsys):
    cause, code, start = CAUSES[case]
    error = task_error(cause, dual)
    if nested:
        error = task_error(error, dual)

    def handler(args):
        raise error

    monkeypatch.setitem(cli_main.COMMANDS, "status", cli_main.Command(handler, store.status_arguments, "status"))
    assert cli_main.main(["status", "anything"]) == code
    out, err = capsys.readouterr()
    assert err.startswith(start) and err.count("\n") == 1, err
    assert "Traceback" not in err and "ray::" not in err and out == ""


def test_raygram_cause_unwraps_only_raygram_errors():
    corrupt = CorruptTile("bad tile")
    assert cli_main.raygram_cause(corrupt) is corrupt
    assert cli_main.raygram_cause(task_error(corrupt, dual=True)) is corrupt
    assert cli_main.raygram_cause(task_error(task_error(corrupt, False), True)) is corrupt
    assert cli_main.raygram_cause(ValueError("a bug")) is None
    assert cli_main.raygram_cause(task_error(ZeroDivisionError("a bug"), dual=True)) is None


def test_any_other_error_in_a_ray_task_keeps_its_traceback(monkeypatch):
    error = task_error(ZeroDivisionError("a bug"), dual=True)

    def handler(args):
        raise error

    monkeypatch.setitem(cli_main.COMMANDS, "status", cli_main.Command(handler, store.status_arguments, "status"))
    with pytest.raises(ZeroDivisionError):
        cli_main.main(["status", "anything"])


def test_a_corrupt_tile_raised_in_a_real_ray_task(ray_address, monkeypatch, capsys):
    """What `ray.get` really raises for a task that met a corrupt tile: one line, exit 1."""
    import ray

    @ray.remote(num_cpus=0)
    def read_tile():
        raise CorruptTile("tile train_train[0,1] of the store /s is corrupt (ntk chunk missing); "
                          "run `raygram build --verify`")

    def handler(args):
        ray.get(read_tile.remote())

    monkeypatch.setitem(cli_main.COMMANDS, "status", cli_main.Command(handler, store.status_arguments, "status"))
    assert cli_main.main(["status", "anything"]) == 1
    out, err = capsys.readouterr()
    assert err == ("raygram: failed: tile train_train[0,1] of the store /s is corrupt (ntk chunk missing); "
                   "run `raygram build --verify`\n"), err
