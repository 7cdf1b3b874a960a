"""Forward-mode AD plumbing shared by the ops' JVP rules (adaln_jvp.py, attention_jvp.py, conditioning_jvp.py).

A `torch.library.custom_op` has no forward-AD rule: under `torch.func.jvp` it returns an exactly-zero tangent
(no error). So while a forward-AD level is open, each public op runs as a `torch.autograd.Function` whose
`forward` / `backward` call the same custom ops and whose `jvp` computes the tangent; otherwise it calls the
custom op directly, as before (no Function overhead, and the path torch.compile traces). Dynamo refuses an
autograd.Function with a user-defined jvp ("Unsupported custom jvp"), so forward AD inside torch.compile
raises instead of tracing the zero-tangent custom op. The rules' tangents come from custom ops too, so
nested forward AD (a jvp of a jvp) raises as well.
"""
import torch
from torch._functorch import eager_transforms
from torch.autograd import forward_ad


def forward_ad_active():
    """Whether a forward-AD level is open: inside torch.func.jvp (also jacfwd, linearize) or
    torch.autograd.forward_ad.dual_level(). Both enter the level through forward_ad.enter_dual_level,
    which keeps this module-level counter (-1 outside any level); Dynamo guards on it when it reads it."""
    return forward_ad._current_level >= 0


def check_dual(op):
    """Raise where a JVP rule would be silently wrong. Inside torch.compile: the rules are autograd.Functions
    with a custom jvp, which Dynamo cannot trace, and the custom op it would trace instead gives a zero
    tangent (fullgraph=False falls back to eager for the frame, where the rule runs). Nested torch.func.jvp:
    a rule's tangent comes from a custom op, whose own tangent (the second derivative) would be zero."""
    if torch.compiler.is_compiling():
        raise RuntimeError(f"{op}: forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) through "
                           f"shortcut_kernels ops cannot run inside torch.compile (their JVP rules are "
                           f"autograd.Functions with a custom jvp, which Dynamo does not trace); call the "
                           f"JVP outside the compiled region")
    if getattr(eager_transforms, "JVP_NESTING", 0) > 1:
        raise RuntimeError(f"{op}: nested forward-mode AD (torch.func.jvp inside torch.func.jvp: second "
                           f"derivatives) has no rule in the fused ops; run the model with kernels='torch', "
                           f"attention='torch'")


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


def or_zeros(t, like):
    """An input's tangent, zeros when it carries none (set_materialize_grads(False) passes None)."""
    return torch.zeros_like(like) if t is None else t
