"""Step arithmetic shared by pretrain, SFT and DPO, so the three stages cannot drift apart.

Labels follow the transformers convention: ``-100`` marks a position that carries no loss (prompt,
audio, padding). Logits at position t predict the token at t + 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and the mask of positions that count.

    logits (B, T, V), labels (B, T) → (logps (B, T-1), mask (B, T-1) bool), aligned to ``labels[:, 1:]``.
    """
    target = labels[:, 1:]
    mask = target != IGNORE
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = torch.gather(logps, 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the labelled tokens of each sequence: (B, T, V), (B, T) → (B,)."""
    logps, _ = token_logprobs(logits, labels)
    return logps.sum(dim=-1)


def count_targets(labels: torch.Tensor) -> int:
    """Tokens that carry loss in a batch (what ``nll_sum`` is divided by over a whole accumulated step)."""
    return int((labels[:, 1:] != IGNORE).sum())


def nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over the labelled tokens. Divide by the target count of the *whole*
    accumulated batch, so k micro-batches give the same loss and gradients as one batch of k × B."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


class DPOLoss(torch.nn.Module):
    """Direct Preference Optimization, sigmoid loss (Rafailov et al. 2023, eq. 7):

        L = -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

    With ``rpo_alpha`` > 0 it is SFT-regularised (RPO, Pang et al. 2024): each pair adds ``rpo_alpha`` times
    the chosen reply's NLL per token, ``-log π(y_w|x) / |y_w|``, so DPO cannot push the chosen reply's
    likelihood down while it widens the margin (the over-optimisation that costs what SFT learned).

    Inputs are summed log-probs of the chosen (y_w) and rejected (y_l) replies, each of shape (B,), and for
    RPO the chosen replies' target token counts (B,). Returns the per-pair loss (B,), and the implicit
    rewards β (log π - log π_ref) of both replies (B,).
    """

    def __init__(self, beta: float = 0.1, rpo_alpha: float = 0.0):
        super().__init__()
        self.beta = beta
        self.rpo_alpha = rpo_alpha

    def forward(self, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                ref_rejected: torch.Tensor, chosen_tokens: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chosen_reward = self.beta * (policy_chosen - ref_chosen)
        rejected_reward = self.beta * (policy_rejected - ref_rejected)
        losses = -F.logsigmoid(chosen_reward - rejected_reward)
        if self.rpo_alpha:
            if chosen_tokens is None:
                raise ValueError("RPO needs the chosen replies' token counts")
            losses = losses + self.rpo_alpha * (-policy_chosen / chosen_tokens.clamp(min=1))
        return losses, chosen_reward.detach(), rejected_reward.detach()
