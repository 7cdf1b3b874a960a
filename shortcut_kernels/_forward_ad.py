"""Forward-mode AD plumbing shared by the ops' JVP rules (adaln_jvp.py, attention_jvp.py, conditioning_jvp.py).

A `torch.library.custom_op` has no forward-AD rule: under `torch.func.jvp` it returns an exactly-zero tangent
(no error). So while a forward-AD level is open, each public op runs as a `torch.autograd.Function` whose
`forward` / `backward` call the same custom ops and whose `jvp` computes the tangent; otherwise it calls the
custom op directly, as before (no Function overhead, and the path torch.compile traces). Dynamo refuses an
autograd.Function with a user-defined jvp ("Unsupported custom jvp"), so forward AD inside torch.compile
raises instead of tracing the zero-tangent custom op.
"""
import torch
from torch.autograd import forward_ad


def forward_ad_active():
    """Whether a forward-AD level is open: inside torch.func.jvp (also jacfwd, linearize) or
    torch.autograd.forward_ad.dual_level(). Both enter the level through forward_ad.enter_dual_level,
    which keeps this module-level counter (-1 outside any level); Dynamo guards on it when it reads it."""
    return forward_ad._current_level >= 0


def check_eager(op):
    """The JVP rules are autograd.Functions with a custom jvp, which Dynamo cannot trace: raise a clear
    error rather than trace the custom op, whose tangent would be zero. (fullgraph=False falls back to
    eager for the frame, where the rule runs.)"""
    if torch.compiler.is_compiling():
        raise RuntimeError(f"{op}: forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) through "
                           f"shortcut_kernels ops cannot run inside torch.compile (their JVP rules are "
                           f"autograd.Functions with a custom jvp, which Dynamo does not trace); call the "
                           f"JVP outside the compiled region")


class _StopTangentGrad(torch.autograd.Function):
    """Identity whose backward raises: the tangents of the fused ops are not differentiable."""

    @staticmethod
    def forward(t, op):
        return t.view_as(t)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op = inputs[1]

    @staticmethod
    def jvp(ctx, tt, _top):
        return tt   # the identity is linear: nested forward AD passes through

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(f"{ctx.op}: the tangent from its JVP rule is not differentiable (no second-order "
                           f"rule); detach it before it enters a loss, as MeanFlow does with "
                           f"stop_gradient(du/dt), or run the model with kernels='torch', attention='torch'")


def no_grad_tangent(t, op):
    """t, with a backward that raises when a gradient reaches it. Applied whatever t.requires_grad says:
    under torch.func.jvp t is a functorch wrapper that reports False while the tensor inside is in a graph."""
    return _StopTangentGrad.apply(t, op)
