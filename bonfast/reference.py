"""Plain-PyTorch oracles for the loss head: the truth every fast path is tested against.

Nothing here is fast or memory-frugal: `linear_logprobs_ref` forms the whole [T, V] logits matrix. Both
functions run in float64 when given float64 inputs (tests use that as ground truth) and are differentiable
with ordinary autograd (tests run `torch.autograd.gradcheck` on them).

Shapes:
    hidden  [T, D]    weight [V, D]    targets [T] int64
    logp, entropy, lse, old_logp, ref_logp, sample_index  [T]
    weights [S] (or any shape, flattened: sample_index indexes weights.reshape(-1))
"""
import torch

from bonfast._validation import resolve_clip_eps

__all__ = ["linear_logprobs_ref", "bon_loss_ref"]


def linear_logprobs_ref(hidden, weight, targets, *, temperature=1.0, ignore_index=-100):
    r"""Token log-probabilities, entropies and log-normalisers of a linear LM head.

    .. math::
        z_{tv} = x_t \cdot w_v / \tau, \qquad \mathrm{lse}_t = \log \sum_v e^{z_{tv}},
        \qquad \log p_t = z_{t y_t} - \mathrm{lse}_t,
        \qquad H_t = \mathrm{lse}_t - \sum_v \mathrm{softmax}(z_t)_v \, z_{tv}.

    Logits are computed in float32, or float64 when either input is float64 (bf16 / fp16 inputs are upcast
    before the matrix product). A row whose target equals `ignore_index` is as if absent: its logp, entropy
    and lse are all 0 and it receives no gradient.

    Shapes:
        hidden [T, D], weight [V, D], targets [T] -> (logp [T], entropy [T], lse [T]) in the compute dtype.
    """
    compute = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
    z = hidden.to(compute) @ weight.to(compute).T / temperature  # (T, V)
    lse = torch.logsumexp(z, dim=-1)
    logq = z - lse[:, None]  # (T, V)
    valid = targets != ignore_index
    logp = logq.gather(-1, torch.where(valid, targets, 0)[:, None])[:, 0]
    entropy = -(logq.exp() * logq).sum(-1)
    zero = torch.zeros((), dtype=compute, device=z.device)
    return torch.where(valid, logp, zero), torch.where(valid, entropy, zero), torch.where(valid, lse, zero)


def bon_loss_ref(logp, sample_index, weights, *, normaliser, old_logp=None, ref_logp=None, clip_eps=None,
                 kl_coef=0.0):
    r"""BoN-weighted policy-gradient loss over packed tokens, with optional PPO clipping and k3 KL.

    Token t belongs to sample s(t) = sample_index[t] and carries that sample's weight w_{s(t)};
    sample_index[t] < 0 marks padding, which contributes nothing (value and gradient). With N the constant
    `normaliser` (e.g. G * max_len; never a per-sequence average):

    .. math::
        \mathcal{L} = -\frac{1}{N} \sum_t f_t + \frac{\beta}{N} \sum_t k3_t,

    * plain form (old_logp is None): :math:`f_t = w_{s(t)} \log p_t`;
    * clipped form (old_logp given): with :math:`r_t = e^{\log p_t - \log p^{old}_t}`,
      :math:`f_t = \min(r_t w_{s(t)},\ \mathrm{clip}(r_t, 1-\epsilon_{lo}, 1+\epsilon_{hi})\, w_{s(t)})`.
      Its gradient is :math:`\partial f_t / \partial \log p_t = r_t w_{s(t)}` where the unclipped branch is
      active and 0 where the clipped one is, so at :math:`r_t = 1` it equals the plain form's
      :math:`w_{s(t)}` (the values differ: :math:`w` versus :math:`w \log p`);
    * k3 KL (ref_logp given, kl_coef = beta): :math:`k3_t = e^{d_t} - d_t - 1`, :math:`d_t = \log p^{ref}_t -
      \log p_t` (unweighted; padding excluded).

    `clip_eps` is a float or an (eps_low, eps_high) pair; None means 0.2 when old_logp is given.
    Computed in the promoted dtype of logp and weights (float64 in, float64 out).

    Shapes:
        logp, sample_index, old_logp, ref_logp [T]; weights [S] (flattened) -> scalar.
    """
    dtype = torch.promote_types(logp.dtype, weights.dtype)
    valid = sample_index >= 0
    zero = torch.zeros((), dtype=dtype, device=logp.device)
    lp = torch.where(valid, logp.to(dtype), zero)  # masked first, so padding can never make NaN gradients
    w = torch.where(valid, weights.reshape(-1).to(dtype)[sample_index.clamp(min=0)], zero)
    eps = resolve_clip_eps(clip_eps, old_logp)
    if eps is None:
        f = w * lp
    else:
        ratio = torch.exp(lp - torch.where(valid, old_logp.to(dtype), zero))
        f = torch.minimum(ratio * w, ratio.clamp(1.0 - eps[0], 1.0 + eps[1]) * w)
    loss = -f.sum() / normaliser
    if ref_logp is not None and kl_coef != 0.0:
        d = torch.where(valid, ref_logp.to(dtype), zero) - lp
        k3 = torch.where(valid, torch.exp(d) - d - 1.0, zero)
        loss = loss + kl_coef * k3.sum() / normaliser
    return loss
