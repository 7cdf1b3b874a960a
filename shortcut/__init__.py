"""shortcut: one-step / few-step diffusion with shortcut models (Frans et al., ICLR 2025) in PyTorch."""
from .config import OBJECTIVE_NAMES, PRESETS, TRAIN_PRESETS, MeanFlowConfig, ModelConfig, ObjectiveConfig, TrainConfig
from .model import ShortcutDiT, ShortcutMLP
from .objective import ShortcutBatch, shortcut_loss, shortcut_targets
from .graph import GraphSampler
from .sampler import sample, step_schedule
from .pretrained import from_pretrained, save_pretrained
from .train import train

__all__ = ["PRESETS", "ModelConfig", "ObjectiveConfig", "TrainConfig", "ShortcutDiT", "ShortcutMLP",
           "ShortcutBatch", "shortcut_targets", "shortcut_loss", "sample", "step_schedule", "GraphSampler", "train",
           "TRAIN_PRESETS", "save_pretrained", "from_pretrained", "OBJECTIVE_NAMES", "MeanFlowConfig"]
