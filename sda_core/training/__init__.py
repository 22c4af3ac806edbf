"""SDA LoKr training over plain denoiser callables (pure torch; the node layer builds the callables).

lokr        TrainableLoKr / LoKrSet / SlicedLoKr (LyCORIS maths, weight-wrapper shaped)
trajectory  the flow sigmas of a shift (ComfyUI's simple scheduler) and the no-grad Euler rollout; a host's own
            sigmas and noise scale come in through SDAConfig
targets     the layers an SDA LoKr trains per architecture, and their names in the saved file
loss        the SDA terms, one pure function each;  step: the forwards that feed them
loop        train(): per-step generators, AdamW on the LoKr, skip/diverge, interrupt, checkpoints
checkpoint  resumable state as safetensors + JSON;  lokr_file: the LoKr file with full metadata (and
            its tensors under LyCORIS's own names)
evaluate    held-out direction alignment
plot        loss curves (and eval LPIPS) as an IMAGE;  grad_checkpoint: block checkpointing that replays
            the adapter switches;  rope: autograd for a RoPE kernel that has none (ComfyUI 0.8's comfy-kitchen)
"""
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import X0_PROJECTION, SDAConfig, SDAModels
from .evaluate import alignment
from .lokr import LoKrSet, SlicedLoKr, TrainableLoKr
from .lokr_file import lycoris_state_dict, save_lokr, training_metadata
from .loop import TeacherNotFinite, TrainingDiverged, TrainingFault, TrainResult, train
from .trajectory import flow_sigmas, rollout
from .step import LossTerms, sda_loss

__all__ = [
    "Checkpoint", "load_checkpoint", "save_checkpoint",
    "SDAConfig", "SDAModels", "X0_PROJECTION",
    "alignment",
    "LoKrSet", "SlicedLoKr", "TrainableLoKr",
    "lycoris_state_dict", "save_lokr", "training_metadata",
    "TeacherNotFinite", "TrainingDiverged", "TrainingFault", "TrainResult", "train",
    "flow_sigmas", "rollout",
    "LossTerms", "sda_loss",
]
