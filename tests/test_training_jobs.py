"""The pieces the training jobs share (rehyat/training/job.py, distill_job.py, distill_progress.py,
finetune_job.py); the jobs end to end run in the CLI and node tests (test_distill_*, test_finetune_*)."""

from __future__ import annotations

import pytest

from rehyat.baselines import BaselineAttentionConfig
from rehyat.config import ConversionConfig, FeatureMapConfig, HybridAttentionConfig
from rehyat.ops import chunk_layout
from rehyat.training.distill_job import DistillInputs, conversion_for
from rehyat.training.distill_progress import DistillProgress, pick_query_chunks
from rehyat.training.distributed import DistributedContext
from rehyat.training.finetune import FinetuneConfig
from rehyat.training.finetune_job import FinetuneInputs
from rehyat.training.job import OutputFile, open_run_folder, write_output_group
from rehyat.training.options import DistillOptions, check_distillable


def test_conversion_for_is_the_config_the_settings_name():
    built = conversion_for(num_blocks=4, placement="even", chunk_frames=2, overlap_frames=0, causal=False,
                           phi_hidden_dim=32, phi_feature_dim=16)
    assert built == ConversionConfig(num_blocks=4, placement="even", attention=HybridAttentionConfig(
        chunk_frames=2, overlap_frames=0, causal=False, feature_map=FeatureMapConfig(32, 16)))
    assert conversion_for(num_blocks=None, placement="last", chunk_frames=3, overlap_frames=1, causal=True,
                          phi_hidden_dim=256, phi_feature_dim=256) == ConversionConfig()


def test_job_inputs_refuse_a_run_name_that_is_not_a_folder_name(tmp_path):
    with pytest.raises(ValueError, match="run_name"):
        DistillInputs(ConversionConfig(), DistillOptions(), tmp_path, "../escape")
    with pytest.raises(ValueError, match="run_name"):
        FinetuneInputs(FinetuneConfig(), tmp_path, "a/b", {})


def test_progress_survives_a_checkpoint_round_trip():
    progress = DistillProgress(step=7, group=2, forward_in_group=1, mean_loss=[1.0, 0.5],
                               block_loss={"3": [1.0, 0.5]}, seconds=4.5)
    assert DistillProgress.from_extra(progress.to_extra()) == progress
    old = progress.to_extra()
    del old["seconds"]  # checkpoints written before the time was kept
    assert DistillProgress.from_extra(old).seconds == 0.0


def test_query_chunks_are_a_seeded_fraction_of_those_with_a_linear_part():
    attention = HybridAttentionConfig(chunk_frames=2, overlap_frames=1)
    eligible = [c.index for c in chunk_layout(12, 2, 1) if c.window_start > 0]
    assert pick_query_chunks(12, attention, 1.0, seed=0) is None
    picked = pick_query_chunks(12, attention, 0.5, seed=3)
    assert picked == pick_query_chunks(12, attention, 0.5, seed=3)
    assert len(picked) == 3 and set(picked) <= set(eligible) and picked == sorted(picked)
    assert len(pick_query_chunks(12, attention, 1e-3, seed=0)) == 1  # never none


def test_distillation_refuses_what_cannot_train():
    with pytest.raises(ValueError, match="query_chunk_fraction < 1 needs causal"):
        check_distillable(HybridAttentionConfig(causal=False), DistillOptions(query_chunk_fraction=0.5))
    with pytest.raises(ValueError, match="no φ to distil"):
        check_distillable(BaselineAttentionConfig(variant="windowed_softmax"), DistillOptions())
    with pytest.raises(ValueError, match="needs ReHyAt attention"):
        check_distillable(BaselineAttentionConfig(variant="linear_only"),
                          DistillOptions(query_chunk_fraction=0.5))
    check_distillable(HybridAttentionConfig(), DistillOptions(query_chunk_fraction=0.5))


def test_output_group_shares_one_new_stem_and_never_overwrites(tmp_path):
    def writer(text):
        def save(path):
            with open(path, "x") as handle:  # refuses an existing file, like every job output
                handle.write(text)
            return path
        return save

    files = [OutputFile("a", tmp_path / "x", ".one", writer("1")), OutputFile("b", tmp_path / "y", ".two",
                                                                            writer("2"))]
    first = write_output_group("run_s5", files)
    second = write_output_group("run_s5", files)
    assert first == {"a": str(tmp_path / "x" / "run_s5.one"), "b": str(tmp_path / "y" / "run_s5.two")}
    assert second == {"a": str(tmp_path / "x" / "run_s5_01.one"), "b": str(tmp_path / "y" / "run_s5_01.two")}
    assert (tmp_path / "x" / "run_s5.one").read_text() == "1"


def test_run_folder_is_bound_to_its_identity(tmp_path):
    ctx = DistributedContext()
    folder = open_run_folder(tmp_path, "run", {"model": "a"}, ctx, keep_last=3)
    assert folder.path == tmp_path / "run" and folder.keep_last == 3
    assert open_run_folder(tmp_path, "run", {"model": "a"}, ctx).path == folder.path  # resumes
    with pytest.raises(ValueError, match="differs in: model"):
        open_run_folder(tmp_path, "run", {"model": "b"}, ctx)
