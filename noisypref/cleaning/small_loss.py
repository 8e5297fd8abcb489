"""The small-loss criterion: after a short warm-up run, the pairs with the largest loss are suspect.

Networks fit the consistent (clean) part of noisy labels before they memorise the rest (Arpit et al.,
"A Closer Look at Memorization in Deep Networks", ICML 2017), so early in training the mislabelled pairs
are the ones with large loss; co-teaching (Han et al., NeurIPS 2018) trains on the small-loss share. Here:
DPO from the reference model for ``steps`` steps on every noisy pair, then each pair's DPO loss
−log σ(h), h its implicit reward gap. Every pair is judged by a model that trained on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noisypref.checks import check_integer, check_positive, option_field
from noisypref.cleaning.base import JudgeInputs, JudgeOptions, JudgeScores, register_judge
from noisypref.cleaning.estimate import anchor_flip_rate


@dataclass(frozen=True)
class SmallLossOptions(JudgeOptions):
    steps: int = option_field(
        8, "optimizer steps of the warm-up DPO run (batch size and learning rate: the run's)"
    )
    beta: float = option_field(0.1, "β of the warm-up DPO run")

    def __post_init__(self) -> None:
        check_integer("steps", self.steps, minimum=1)
        check_positive("beta", self.beta)

    @property
    def needs_models(self) -> bool:
        return True


@register_judge(
    "small_loss",
    options=SmallLossOptions,
    description="DPO loss of each pair after a short warm-up run on the noisy pairs; suspicion = the loss",
    source="the small-loss criterion (Arpit et al. 2017; Han et al. 2018, co-teaching)",
)
def score_by_warmup_loss(inputs: JudgeInputs, options: SmallLossOptions) -> JudgeScores:
    every_pair = np.arange(len(inputs.pairs))
    reward_gaps = inputs.require_models("small_loss").trained_reward_gaps(
        every_pair, every_pair, steps=options.steps, beta=options.beta, seed=inputs.seed
    )
    reward_gaps = np.asarray(reward_gaps, dtype=np.float64)
    dpo_loss = np.logaddexp(0.0, -reward_gaps)  # −log σ(h) (Rafailov et al. 2023, eq. 7)
    return JudgeScores(dpo_loss, anchor_flip_rate(reward_gaps))
