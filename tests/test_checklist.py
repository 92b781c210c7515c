"""Every item of the reliability checklist (shared/RELIABILITY.md) and the tests that prove it.

The table is the map a reviewer reads; the test keeps it true: each item names at least one test, and every
named test exists, so renaming or deleting a test that guards an item fails here until the map is updated.
"""

from __future__ import annotations

import importlib

import pytest

CHECKLIST: dict[int, tuple[str, list[str]]] = {
    # weights and checkpoints
    1: ("Git LFS pointer instead of weights", ["test_convert::test_corrupt_weight_files_are_named"]),
    2: ("truncated file: expected and actual sizes", [
        "test_convert::test_truncated_real_checkpoint_reports_sizes", "test_convert::test_corrupt_weight_files_are_named"]),
    3: ("header too large, past EOF, not UTF-8, not JSON: rejected before allocating", [
        "test_convert::test_corrupt_weight_files_are_named",
        "test_properties::test_mutated_files_load_identically_or_fail_with_a_named_error"]),
    4: ("overlapping, gapped, out-of-range offsets; span != shape x dtype; trailing bytes", [
        "test_convert::test_corrupt_weight_files_are_named",
        "test_properties::test_mutated_files_load_identically_or_fail_with_a_named_error",
        "test_properties::test_valid_files_read_exactly_as_the_safetensors_library"]),
    5: ("duplicate tensor names", ["test_convert::test_corrupt_weight_files_are_named"]),
    6: ("unsupported dtype named; F16/BF16 upcast exactly", [
        "test_convert::test_integer_weights_are_refused", "test_convert::test_corrupt_weight_files_are_named",
        "test_convert::test_half_precision_storage_is_upcast_exactly"]),
    7: ("every missing key listed, never random init", ["test_convert::test_missing_keys_are_all_named"]),
    8: ("unexpected keys: only the explicit list is ignored", [
        "test_convert::test_unexpected_keys_are_all_named",
        "test_convert::test_bert_prefix_and_heads_of_a_pretraining_checkpoint"]),
    9: ("shape mismatch named; transposes caught by parity", [
        "test_convert::test_config_that_does_not_match_the_weights",
        "test_convert::test_flax_file_holds_transposed_kernels_under_flax_names",
        "test_parity::test_odd_shapes_hidden_states_with_token_types_match_transformers"]),
    10: ("bert. / 0.auto_model. / bare prefixes; a mix is ambiguous", [
        "test_convert::test_bert_prefix_and_heads_of_a_pretraining_checkpoint",
        "test_convert::test_sentence_transformers_module_prefix", "test_convert::test_mixed_prefixes_are_ambiguous"]),
    11: ("sharded index problems caught before loading", [
        "test_convert::test_sharded_index_problems_are_caught_before_loading",
        "test_convert::test_sharded_checkpoint_loads_like_the_single_file"]),
    12: ("pickle-only checkpoint and auto_map refused", [
        "test_convert::test_pickle_only_checkpoint_is_refused", "test_convert::test_auto_map_custom_code_is_refused",
        "test_model::test_config_refuses_what_the_model_does_not_implement"]),
    13: ("converter writes atomically, in place too, and verifies by reading back", [
        "test_convert::test_convert_in_place_keeps_the_hf_weights",
        "test_convert::test_round_trip_is_bit_exact_for_each_storage_dtype",
        "test_properties::test_kill_9_during_writes_leaves_a_whole_file",
        "test_properties::test_kill_9_during_side_file_copies_leaves_a_whole_file"]),
    14: ("NaN or Inf in the weights named", ["test_convert::test_nan_in_weights_names_the_tensor"]),
    # config and tokenizer
    15: ("config fields the model does not implement named", [
        "test_model::test_config_refuses_what_the_model_does_not_implement",
        "test_model::test_config_missing_field_and_bad_json",
        "test_encoder::test_unsupported_sentence_transformers_folders_are_refused",
        "test_encoder::test_context_without_sentence_bert_config_is_capped_by_the_tokenizer_like_sentence_transformers"]),
    16: ("CLS pooling and include_prompt=false honoured, others refused", [
        "test_encoder::test_cls_pooling_can_be_selected_frida_style",
        "test_encoder::test_include_prompt_false_and_every_pooling_mode_match_sentence_transformers",
        "test_encoder::test_unsupported_sentence_transformers_folders_are_refused"]),
    17: ("unknown prompt name lists the known ones", [
        "test_encoder::test_unknown_prompt_name_lists_the_available_ones",
        "test_job::test_bad_options_and_missing_files_are_one_line_errors"]),
    18: ("token ids checked against the embedding table", [
        "test_encoder::test_tokenizer_larger_than_embedding_table_is_refused",
        "test_encoder::test_token_embeddings_checks_ids_before_jax_clamps_them"]),
    # text input
    19: ("[] gives [0, hidden] float32 without compiling", [
        "test_encoder::test_empty_list_gives_empty_array_without_compiling",
        "test_job::test_empty_input_gives_an_empty_valid_output"]),
    20: ("empty and blank strings embed as prompt + [CLS][SEP]", [
        "test_encoder::test_empty_and_blank_strings_embed_as_prompt_plus_special_tokens"]),
    21: ("None, non-string, missing field: index or file:line; skip keeps alignment", [
        "test_encoder::test_non_string_item_names_its_index",
        "test_job::test_bad_rows_stop_with_file_and_line_or_are_skipped_and_listed",
        "test_job::test_csv_quoted_newlines_long_fields_and_skipped_bad_bytes"]),
    22: ("over the context: truncated and reported; huge strings cut before tokenizing", [
        "test_encoder::test_truncation_is_reported_never_silent",
        "test_encoder::test_multi_megabyte_text_is_cut_before_tokenizing_with_the_same_result",
        "test_job::test_truncation_report_and_plain_progress_lines"]),
    23: ("invalid UTF-8 with line and byte; BOM, NUL, CRLF; split on \\n only", [
        "test_job::test_bad_rows_stop_with_file_and_line_or_are_skipped_and_listed",
        "test_job::test_bom_nul_and_crlf_in_text_files", "test_job::test_lines_split_on_newline_only",
        "test_job::test_malformed_files_are_named_with_row_group_or_line",
        "test_cli_and_hub::test_parity_texts_file_errors_name_the_line"]),
    # batch job files
    24: ("kill -9 anywhere: --resume from an atomic manifest, nothing torn at a final path", [
        "test_job::test_resume_after_kill_9_at_several_points_is_byte_identical",
        "test_properties::test_kill_9_during_writes_leaves_a_whole_file",
        "test_job::test_ctrl_c_commits_the_current_chunk_and_resume_finishes"]),
    25: ("same command again: verified no-op; changed model, prompt or input refused", [
        "test_job::test_existing_output_changed_inputs_and_held_lock_are_refused"]),
    26: ("disk full, read-only folder, output is a directory: clear error, temporaries cleaned, output intact", [
        "test_job::test_disk_full_keeps_committed_chunks_and_the_earlier_output",
        "test_job::test_unwritable_output_folder_is_a_clear_error",
        "test_job::test_output_path_that_is_a_directory_is_refused"]),
    27: ("two runs on one output: the second fails fast", [
        "test_job::test_existing_output_changed_inputs_and_held_lock_are_refused"]),
    28: ("output row i is input row i, whatever the sorting or process count", [
        "test_job::test_every_input_format_gives_the_embeddings_in_input_order",
        "test_encoder::test_rows_come_back_in_input_order",
        "test_job::test_two_processes_with_jax_distributed_match_one_process",
        "test_throughput::test_four_devices_give_the_same_embeddings_as_one"]),
    29: ("input changed during the run, malformed parquet/jsonl/csv: named with row group or line", [
        "test_job::test_input_changed_during_the_run_is_refused_before_assembly",
        "test_job::test_malformed_files_are_named_with_row_group_or_line"]),
    # numerical
    30: ("filler rows never NaN; non-finite output never committed", [
        "test_encoder::test_outputs_are_finite_with_filler_rows",
        "test_encoder::test_non_finite_embeddings_are_an_error_naming_the_texts",
        "test_job::test_non_finite_embeddings_stop_the_job_naming_file_and_line"]),
    31: ("highest matmul precision; same embedding alone or beside long texts; compile count bounded", [
        "test_model::test_float32_matmuls_are_pinned_to_highest_precision",
        "test_encoder::test_embedding_is_the_same_alone_beside_long_texts_and_at_any_batch_size",
        "test_throughput::test_compiled_shapes_are_bounded_whatever_the_number_of_texts"]),
}


def test_every_checklist_item_is_mapped():
    assert sorted(CHECKLIST) == list(range(1, 32))
    assert all(tests for _, tests in CHECKLIST.values())


@pytest.mark.parametrize("item", sorted(CHECKLIST))
def test_each_mapped_test_exists(item):
    for ref in CHECKLIST[item][1]:
        module, name = ref.split("::")
        assert callable(getattr(importlib.import_module(f"tests.{module}"), name, None)), f"item {item}: {ref} is gone"
