"""Sharding over processes: 2 gloo ranks on the CPU give the same results as 1 process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core.runtime.distributed import SINGLE, Context, all_ok, broadcast, gather, gather_indexed, shard
from tests.test_synthetic import synthetic_cache, trained  # noqa: F401  (session fixture)

ROOT = Path(__file__).resolve().parent.parent
# what may differ between runs: timings and the number of processes
VOLATILE = {"seconds", "world_size", "job_seconds", "timing"}


def test_shards_cover_every_item_once():
    for world in (1, 2, 3, 5):
        ranks = [shard(11, Context(r, world, r, SINGLE.device)) for r in range(world)]
        flat = sorted(i for part in ranks for i in part)
        assert flat == list(range(11))
        assert max(map(len, ranks)) - min(map(len, ranks)) <= 1


def test_single_process_helpers_are_trivial():
    assert gather({"a": 1}, SINGLE) == [{"a": 1}]
    assert gather_indexed([(2, "c"), (0, "a"), (1, "b")], SINGLE) == ["a", "b", "c"]
    assert broadcast(5, SINGLE) == 5
    assert all_ok(True, SINGLE) and not all_ok(False, SINGLE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # equal thread counts: equal float results
    if nproc == 1:
        command = [sys.executable, "main.py", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                   "main.py", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def _stable(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in VOLATILE}


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(trained, tmp_path, tmp_path_factory):  # noqa: F811
    cache = synthetic_cache(tmp_path_factory)
    common = ["--dataset", "synthetic", "--cache-dir", cache, "--device", "cpu", "--quiet"]
    evaluate = ["evaluate", *common, "--images", "5", "--sanity-images", "2", "--steps", "5",
                "--methods", "gradient,grad-cam,smoothgrad,random,oracle"]
    roar = ["roar", *common, "--methods", "gradient,oracle", "--fractions", "30,70",
            "--train-images", "96", "--test-images", "32", "--epochs", "1"]
    pathways = ["pathways", *common, "--images", "6", "--graph-nodes", "4"]
    results = {}
    for nproc in (1, 2):
        for name, args in (("evaluate", evaluate), ("roar", roar), ("pathways", pathways)):
            out = tmp_path / f"{name}{nproc}"
            done = _launch(nproc, *map(str, args), "--out", str(out))
            assert done.returncode == 0, done.stderr[-3000:]
            results[name, nproc] = out
    one, two = (_stable(results["evaluate", n] / "results.json") for n in (1, 2))
    assert json.loads((results["evaluate", 2] / "results.json").read_text())["world_size"] == 2
    assert one["images"] == 5 and len(one["sanity"]["images"]) == 2
    assert one == two
    one, two = (_stable(results["roar", n] / "roar.json") for n in (1, 2))
    assert len(one["jobs"]) == 1 + 3 * 2  # unchanged data + (gradient, oracle, random) x 2
    assert one == two
    one, two = (_stable(results["pathways", n] / "pathways.json") for n in (1, 2))
    assert one["images"] == 6 and one == two
    # each rank filled its own rows of the shared map cache: the files are identical too
    for split in ("train", "test"):
        a, b = ((results["roar", n] / "maps" / f"gradient.{split}.npy").read_bytes() for n in (1, 2))
        assert a == b


@pytest.mark.slow
def test_two_gloo_ranks_dissect_as_one_process(trained, tmp_path, tmp_path_factory):  # noqa: F811
    cache = synthetic_cache(tmp_path_factory)
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"dissect{nproc}"
        done = _launch(nproc, "dissect", "--concepts", "synthetic", "--cache-dir", str(cache),
                       "--device", "cpu", "--quiet", "--limit", "37", "--batch-size", "8",
                       "--out", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        results[nproc] = json.loads((out / "dissection.json").read_text())
    assert results[2]["world_size"] == 2
    one, two = ({k: v for k, v in r.items() if k not in VOLATILE} for r in results.values())
    assert one["images"] == 37 and len(one["image_names"]) == 37
    assert one == two
