"""Every Triton kernel, at every configuration its launcher or autotuner can pick, compiled ahead of time for
sm_90 (H100/H200) and sm_80 (A100) without a GPU (shortcut_kernels.aot): it compiles, spills no register,
fits in the per-block shared memory, and runs float64 only where that is meant. DiT-B/2 and DiT-XL/2 shapes
(head_dim 64 and 72, D 768 and 1152, T 256), fp16 / bf16 / fp32 / autocast mixes, forward, backward and the
forward-mode AD (JVP) kernels.

The compile runs in a subprocess (this process runs Triton's interpreter): ~90 s on 2 cores with triton
3.9, ~65 s with 3.6. A failing configuration is pruned from its launcher's list, not skipped here.
"""
import pathlib
import re

import pytest
import torch

pytest.importorskip("triton")

from shortcut_kernels import _triton, aot  # noqa: E402

KERNELS = {"_adaln_fwd_kernel", "_adaln_bwd_kernel", "_adaln_jvp_kernel", "_attn_fwd_kernel",
           "_attn_bwd_delta_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel", "_attn_jvp_kernel",
           "_timestep_features_kernel", "_embed_hidden_kernel", "_embed_sum_kernel"}


@pytest.fixture(scope="module")
def rows():
    return aot.run_in_subprocess()


def test_every_launch_compiles_without_spills_within_shared_memory(rows):
    bad = [f"{r['kernel']} sm_{r['arch']} {r['config']} {r['labels'][0]}: {p}" for r in rows for p in aot.problems(r)]
    assert not bad, "prune these from their launcher's configs:\n" + "\n".join(bad)


def test_every_kernel_and_config_was_compiled(rows):
    """The workloads reach every kernel on both architectures in every dtype, and every autotune candidate."""
    import importlib
    attention = importlib.import_module("shortcut_kernels.attention")
    seen = {(r["kernel"], r["arch"]) for r in rows}
    assert seen == {(k, arch) for k in KERNELS for arch in aot.ARCHS}
    dtypes = {(r["kernel"], label["dtype"]) for r in rows for label in r["labels"]}
    for kernel in KERNELS - {"_timestep_features_kernel"}:
        assert {(kernel, d) for d in ("bf16", "fp16", "fp32")} <= dtypes, kernel
    names = {"fwd": "_attn_fwd_kernel", "dkdv": "_attn_bwd_dkdv_kernel", "dq": "_attn_bwd_dq_kernel",
             "jvp": "_attn_jvp_kernel (one pass)", "tangent": "_attn_jvp_kernel (tangent)"}
    for (kernel, arch, width), candidates in attention.CONFIGS.items():
        compiled = {r["config"] for r in rows for label in r["labels"] if aot.kernel_name(r) == names[kernel]
                    and r["arch"] == arch and (label["dtype"] == "fp32") == (width == 32)}
        for bm, bn, w, s in candidates:
            assert f"M{bm}×N{bn} w{w} s{s}" in compiled, (kernel, arch, width, (bm, bn, w, s))


def test_float64_only_where_allowed(rows):
    """The allow-list is exact: the features kernels (fp64 cos/sin on purpose) do use fp64, no other kernel."""
    uses = {r["kernel"] for r in rows if r["float64"]}
    assert uses == set(aot.FLOAT64_ALLOWED)


def test_registers_come_from_the_ptxas_log(rows):
    assert all(0 < r["registers"] <= 255 for r in rows)
    assert all(r["shared"] >= 0 and r["stack"] >= 0 for r in rows)


# ---------------------------------------------------------------------------------------------------
# The pieces, without compiling.
PTXAS_LOG = """ptxas info    : 28 bytes gmem
ptxas info    : Compiling entry function '_attn_fwd_kernel' for 'sm_80'
ptxas info    : Function properties for _attn_fwd_kernel
    16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size
"""


def test_parse_ptxas_log():
    assert aot.parse_ptxas(PTXAS_LOG) == (255, 16, 12, 20)
    assert aot.parse_ptxas(PTXAS_LOG.replace("ptxas info", "ptxas-blackwell info")) == (255, 16, 12, 20)
    with pytest.raises(ValueError, match="no register report"):
        aot.parse_ptxas("ptxas info    : 0 bytes gmem")


def test_problems_are_found():
    ok = dict(arch=80, kernel="_attn_fwd_kernel", config="", labels=[], error=None, registers=128, stack=0,
              spill_stores=0, spill_loads=0, shared=aot.SHARED_LIMIT[80], float64=False)
    assert aot.problems(ok) == []
    assert aot.problems({**ok, "spill_loads": 4}) == ["spills 0 B stored / 4 B loaded"]
    assert "over the sm_80 limit 166912 B" in aot.problems({**ok, "shared": 166_913})[0]
    assert aot.problems({**ok, "shared": 200_000, "arch": 90}) == []
    assert aot.problems({**ok, "float64": True}) == ["uses float64 instructions"]
    assert aot.problems({**ok, "float64": True, "kernel": "_embed_hidden_kernel"}) == []
    assert aot.problems({**ok, "error": "CompilationError: x"}) == ["does not compile: CompilationError: x"]


def test_recorded_launches_cover_every_kernel():
    """The launchers, run on meta tensors under `recording`, hand every kernel to `launch` (nothing runs)."""
    seen = set()
    for _, thunk in aot.workloads():
        with _triton.recording(90) as launches:
            thunk()
        seen |= {getattr(kernel, "fn", kernel).__name__ for kernel, _, _ in launches}
    assert seen == KERNELS


def test_launch_makes_the_tensors_cuda_device_current(monkeypatch):
    """`launch` runs a CUDA launch inside torch.cuda.device(the tensors' device): with --device cuda:1 the
    kernels would otherwise go to the current device, cuda:0."""
    events = []

    class FakeDeviceGuard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            events.append(("enter", self.device))

        def __exit__(self, *exc):
            events.append(("exit", self.device))

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: events.append(("launch", grid, args, kwargs))

    monkeypatch.setattr(torch.cuda, "device", FakeDeviceGuard)
    cuda1 = torch.device("cuda", 1)
    _triton.launch(Kernel(), (3,), cuda1, 1, 2, BLOCK=4)
    assert events == [("enter", cuda1), ("launch", (3,), (1, 2), {"BLOCK": 4}), ("exit", cuda1)]
    events.clear()
    _triton.launch(Kernel(), (3,), torch.device("cpu"), 1)   # the interpreter: no CUDA device to switch
    assert events == [("launch", (3,), (1,), {})]


def test_every_kernel_launch_goes_through_launch():
    """No bare `kernel[grid](...)` in the kernel files: each launch is device-guarded and recordable."""
    root = pathlib.Path(_triton.__file__).parent
    for path in root.glob("*.py"):
        if path.name == "_triton.py":
            continue
        bare = re.findall(r"^.*\w_kernel\s*\[.*$", path.read_text(), flags=re.M)
        assert not bare, f"{path.name}: {bare}"
