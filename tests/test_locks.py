"""Folder locks (`pilot.locks`): a second pilot process on a folder that one is writing fails
at once, naming the holder's pid, and writes nothing; the lock goes when the job ends, also
when its process is killed."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from pilot.locks import LOCK_FILE, FolderInUseError, folder_lock, lock_path

IN_USE = r"is in use by another pilot process \(pid {pid}\); wait for it or stop it"

HOLDER = """
import sys
from pilot.locks import folder_lock
with folder_lock(sys.argv[1], beside=sys.argv[2] == "beside"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def hold_in_subprocess(folder, beside=False) -> subprocess.Popen:
    """A process holding `folder`'s lock until its stdin closes (or it is killed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    where = "beside" if beside else "inside"
    cmd = [sys.executable, "-c", HOLDER, str(folder), where]
    holder = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert holder.stdout.readline() == b"locked\n"
    return holder


def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("beside", [False, True])
def test_a_second_process_is_refused_until_the_first_ends_or_is_killed(tmp_path, beside):
    folder = tmp_path / "OUT.run"
    holder = hold_in_subprocess(folder, beside)
    with pytest.raises(FolderInUseError, match=f"^{folder} {IN_USE.format(pid=holder.pid)}$"):
        with folder_lock(folder, beside=beside):
            pass
    holder.communicate(b"")  # the first job ends: its lock file goes with it
    assert not lock_path(folder, beside=beside).exists()
    with folder_lock(folder, beside=beside):
        pass
    holder = hold_in_subprocess(folder, beside)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(folder, beside=beside).exists()  # left by the kill, but not held
    with folder_lock(folder, beside=beside) as path:
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()


def test_the_lock_is_held_against_the_same_process_and_a_failed_job_leaves_no_folder(tmp_path):
    folder = tmp_path / "new"
    with folder_lock(folder):
        with pytest.raises(FolderInUseError, match=f"^--out new {IN_USE.format(pid=os.getpid())}"):
            with folder_lock(folder, "--out new"):
                pass
    assert not folder.exists()  # made for the lock, left empty: removed
    with pytest.raises(RuntimeError), folder_lock(folder):
        raise RuntimeError("the job failed")
    assert not folder.exists()


def _frame(k):
    K = np.array([[8.0, 0, 4], [0, 8, 3], [0, 0, 1]])
    return K, np.eye(4), np.full((6, 8), 2.0 + k, np.float32)


def test_shot_writer_holds_its_folder_from_creation_to_close(tmp_path):
    from pilot.scenes.shot import Shot, ShotWriter

    root = tmp_path / "shot"
    with folder_lock(root):
        with pytest.raises(ValueError, match=IN_USE.format(pid=os.getpid())):
            ShotWriter(root, 8, 6, settings={"seed": 1})
        assert files(root) == [LOCK_FILE]  # refused: wrote nothing
    assert not root.exists()  # the lock made it, and removed it empty
    root.mkdir()
    (root / LOCK_FILE).touch()  # a killed writer's lock file: not a file of the user's
    writer = ShotWriter(root, 8, 6, settings={"seed": 1})
    writer.add(*_frame(0))
    with pytest.raises(FolderInUseError):  # a second writer while the first works
        ShotWriter(root, 8, 6, settings={"seed": 1})
    writer.close()
    assert LOCK_FILE not in files(root) and len(Shot(root)) == 1
    writer = ShotWriter(root, 8, 6, settings={"seed": 2}, force=True)  # released by close()
    with writer:  # an error (or a kill) leaves the frames so far and releases the folder
        writer.add(*_frame(0))
    again = ShotWriter(root, 8, 6, settings={"seed": 2})
    assert len(again.frames) == 1  # resumed, not refused
    again.release()


def test_shot_writer_ignores_a_stale_lock_beside_frames(tmp_path):
    from pilot.scenes.shot import check_writable

    root = tmp_path / "shot"
    (root / "depth").mkdir(parents=True)
    np.save(root / "depth" / "000000.npy", np.ones((6, 8), np.float32))
    (root / LOCK_FILE).touch()
    check_writable(root)  # still only frames: a shot of ours


def test_a_weights_export_locks_a_sibling_not_the_folder(tmp_path):
    from pilot.models.vae import VAE_PRESETS, AutoencoderKL
    from pilot.weights.loaders import load_vae
    from pilot.weights.save import save_vae

    vae = AutoencoderKL(VAE_PRESETS["tiny"]).eval()
    folder = tmp_path / "vae"
    with folder_lock(folder, beside=True):
        with pytest.raises(ValueError, match=f"^{folder} {IN_USE.format(pid=os.getpid())}$"):
            save_vae(vae, folder)
        assert files(tmp_path) == [".vae.lock"]  # refused: wrote nothing
    save_vae(vae, folder)
    assert files(tmp_path)[0] == "vae"  # no lock left, none inside the model folder
    assert sorted(os.listdir(folder)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    load_vae(folder)
    save_vae(vae, folder, overwrite=True)  # the lock went with the first export


def test_demo_refuses_a_folder_another_demo_writes(tmp_path, monkeypatch):
    from pilot import demo

    out = tmp_path / "demo"
    monkeypatch.setattr(demo, "weight_folders", lambda weights: (tmp_path, tmp_path))
    monkeypatch.setattr(demo, "check_size", lambda config, pipeline: None)
    monkeypatch.setattr(demo, "weights_digest", lambda folders: "0" * 64)
    with folder_lock(out):
        with pytest.raises(ValueError, match=f"^{out} {IN_USE.format(pid=os.getpid())}$"):
            demo.run_demo(out, progress=False, log=None)
        assert files(out) == [LOCK_FILE]  # no settings.json, no shot
    out.mkdir()
    (out / LOCK_FILE).touch()  # a killed demo's lock file: the folder is still "empty"
    demo._check_out_dir(out)


def test_train_refuses_folders_another_training_writes(tmp_path, capsys):
    pytest.importorskip("lightning")
    from pilot.cli import main
    from tests.train.helpers import dcgan_config, write_yaml

    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=1))
    before = files(tmp_path)
    with folder_lock(tmp_path / "ckpt", beside=True):
        assert main(["train", "dcgan", "--config", str(cfg), "--threads", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after Lightning's own lines
        assert err == (
            f"pilot train: error: {tmp_path / 'ckpt'} is in use by another pilot process "
            f"(pid {os.getpid()}); wait for it or stop it"
        )
        assert files(tmp_path) == sorted([*before, ".ckpt.lock"])  # nothing else written
    assert main(["train", "dcgan", "--config", str(cfg), "--threads", "1"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".lock")]  # all released


ORPHANED = """
import os, sys, time
from pilot.locks import folder_lock
with folder_lock(sys.argv[1]):
    if os.fork() == 0:  # a worker the job forked (a DataLoader's): it shares the lock
        time.sleep(1.0)
        os._exit(0)
    os._exit(0)  # the job killed: its worker holds the lock a moment longer
"""


def test_a_lock_left_to_the_workers_of_an_ended_job_is_waited_for(tmp_path):
    """`kill -9` of a `pilot train` leaves its DataLoader workers for a second: a resume at once
    waits for them rather than being refused in the name of a process that has ended."""
    import time

    folder = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", ORPHANED, str(folder)], env=env, check=True)
    start = time.monotonic()
    with folder_lock(folder) as path:
        assert path.read_text() == f"{os.getpid()}\n"
    assert 0.3 < time.monotonic() - start < 10
