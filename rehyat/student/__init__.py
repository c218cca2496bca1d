"""The shipped ReHyAt student of the embedded teacher: the paper's two-stage recipe.

Stage 1 distils φ per block against the softmax teacher; stage 2 fine-tunes with flow matching
(LoRA adapters, φ frozen). :func:`load_student` gives the converted model from the shipped files;
:func:`train_student` runs both stages live.
"""

from .files import LORA_FILE, PHI_FILE, load_student, save_student, student_files_present
from .recipe import StudentRecipe
from .train import StudentResult, train_student

__all__ = [
    "LORA_FILE",
    "PHI_FILE",
    "StudentRecipe",
    "StudentResult",
    "load_student",
    "save_student",
    "student_files_present",
    "train_student",
]
