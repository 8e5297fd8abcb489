"""noisypref's methods inside other people's trainers.

``noisypref.integrations.trl``: ``NoisyPrefDPOTrainer``, TRL's ``DPOTrainer`` with any registered
noisypref method (γ-DPO, γ-SimPO, rDPO, …) in place of its ``loss_type`` (``pip install "noisypref[trl]"``).
"""
