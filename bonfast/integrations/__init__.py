"""Adapters that bring bonfast's BoN-aware objectives into other trainers.

    bonfast.integrations.trl    a TRL ``GRPOTrainer`` subclass whose advantages are bonfast's weights
    bonfast.integrations.verl   advantage estimators (and an exact policy loss) registered in verl

Each is imported on its own, needs its trainer installed (``pip install bonfast[trl]`` / ``bonfast[verl]``), and
states the settings in which the trainer's gradient equals bonfast's ``bon_loss`` gradient (docs/integrations.md).
"""
