"""Every item and class of RELIABILITY.md and the tests that prove it.

The table is the map a reviewer reads; the test keeps it true: each item names at least one test, every named
test exists, and the items and classes are the ones RELIABILITY.md lists.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

CHECKLIST: dict[str, list[str]] = {
    # weights and checkpoints
    "1": ["test_convert::test_corrupt_weight_files_are_named"],
    "2": ["test_convert::test_truncated_real_checkpoint_reports_sizes", "test_convert::test_corrupt_weight_files_are_named"],
    "3": ["test_convert::test_corrupt_weight_files_are_named",
          "test_fuzz::test_mutated_files_load_identically_or_fail_with_a_named_error"],
    "4": ["test_convert::test_corrupt_weight_files_are_named",
          "test_fuzz::test_mutated_files_load_identically_or_fail_with_a_named_error",
          "test_fuzz::test_valid_files_read_exactly_as_the_safetensors_library"],
    "5": ["test_convert::test_corrupt_weight_files_are_named"],
    "6": ["test_convert::test_integer_weights_are_refused", "test_convert::test_corrupt_weight_files_are_named",
          "test_convert::test_half_precision_storage_is_upcast_exactly"],
    "7": ["test_convert::test_missing_keys_are_all_named"],
    "8": ["test_convert::test_unexpected_keys_are_all_named",
          "test_convert::test_bert_prefix_and_heads_of_a_pretraining_checkpoint"],
    "9": ["test_convert::test_config_that_does_not_match_the_weights",
          "test_model_files::test_a_config_that_disagrees_with_the_weights_says_why_first_and_briefly",
          "test_convert::test_flax_file_holds_transposed_kernels_under_flax_names",
          "test_parity::test_odd_shapes_hidden_states_with_token_types_match_transformers"],
    "10": ["test_convert::test_bert_prefix_and_heads_of_a_pretraining_checkpoint",
           "test_convert::test_sentence_transformers_module_prefix", "test_convert::test_mixed_prefixes_are_ambiguous"],
    "11": ["test_convert::test_sharded_index_problems_are_caught_before_loading",
           "test_convert::test_sharded_checkpoint_loads_like_the_single_file"],
    "12": ["test_convert::test_pickle_only_checkpoint_is_refused", "test_convert::test_auto_map_custom_code_is_refused",
           "test_model::test_config_refuses_what_the_model_does_not_implement"],
    "13": ["test_convert::test_round_trip_is_bit_exact_for_each_storage_dtype",
           "test_convert::test_an_overwrite_into_a_converted_folder_leaves_no_stale_weights_file",
           "test_never_destroy::test_convert_refuses_an_existing_destination_and_the_source_itself",
           "test_fuzz::test_kill_9_during_writes_leaves_a_whole_file",
           "test_fuzz::test_kill_9_during_side_file_copies_leaves_a_whole_file"],
    "14": ["test_convert::test_nan_in_weights_names_the_tensor"],
    # config and tokenizer
    "15": ["test_model::test_config_refuses_what_the_model_does_not_implement",
           "test_model::test_config_missing_field_and_bad_json",
           "test_encoder::test_unsupported_sentence_transformers_folders_are_refused",
           "test_encoder::test_context_without_sentence_bert_config_is_capped_by_the_tokenizer_like_sentence_transformers"],
    "16": ["test_encoder::test_cls_pooling_can_be_selected_frida_style",
           "test_encoder::test_include_prompt_false_and_every_pooling_mode_match_sentence_transformers",
           "test_tokenize::test_a_prompt_longer_than_the_context_with_include_prompt_false",
           "test_encoder::test_unsupported_sentence_transformers_folders_are_refused"],
    "17": ["test_encoder::test_unknown_prompt_name_lists_the_available_ones",
           "test_never_destroy::test_a_refused_run_leaves_no_files_behind"],
    "18": ["test_encoder::test_tokenizer_larger_than_embedding_table_is_refused",
           "test_model_files::test_a_tokenizer_that_does_not_fit_the_model_names_the_tokenizer",
           "test_encoder::test_token_embeddings_checks_ids_before_jax_clamps_them"],
    # text input
    "19": ["test_encoder::test_empty_list_gives_empty_array_without_compiling",
           "test_job::test_empty_input_gives_an_empty_valid_output"],
    "20": ["test_encoder::test_empty_and_blank_strings_embed_as_prompt_plus_special_tokens"],
    "21": ["test_encoder::test_non_string_item_names_its_index",
           "test_encoder::test_a_numpy_array_of_strings_embeds_like_the_list",
           "test_job::test_bad_rows_stop_with_file_and_line_or_are_skipped_and_listed",
           "test_inputs::test_csv_quoted_newlines_long_fields_and_bad_bytes"],
    "22": ["test_encoder::test_truncation_is_reported_never_silent",
           "test_encoder::test_multi_megabyte_text_is_cut_before_tokenizing_with_the_same_result",
           "test_tokenize::test_a_multi_megabyte_line_costs_what_its_context_costs",
           "test_tokenize::test_a_sixty_megabyte_line_is_rewritten_from_a_prefix_only",
           "test_tokenize::test_the_bounded_prefix_tokenizes_exactly_like_the_whole_text",
           "test_tokenize::test_added_tokens_spelled_with_deleted_characters_tokenize_like_the_whole_text"],
    "23": ["test_job::test_bad_rows_stop_with_file_and_line_or_are_skipped_and_listed",
           "test_inputs::test_lines_split_on_newline_only_with_bom_nul_and_crlf",
           "test_cli::test_parity_texts_file_errors_name_the_line"],
    # batch job files
    "24": ["test_job::test_resume_after_kill_9_at_several_points_is_byte_identical",
           "test_fuzz::test_kill_9_during_writes_leaves_a_whole_file",
           "test_storage::test_two_processes_write_shards_directly_and_survive_a_kill"],
    "25": ["test_job::test_existing_output_and_changed_inputs_are_refused",
           "test_job_edges::test_a_failed_overwrite_leaves_the_finished_output_complete_and_a_resume_replaces_it",
           "test_job::test_a_finished_run_leaves_the_output_its_record_and_nothing_else"],
    "26": ["test_job::test_disk_full_keeps_committed_chunks_and_the_earlier_output",
           "test_job::test_a_finished_output_in_a_read_only_folder_is_verified_not_refused",
           "test_job::test_unwritable_output_folder_and_a_directory_output_are_clear_errors"],
    "27": ["test_lock::test_a_second_run_single_or_multi_process_is_refused_while_the_first_works"],
    "28": ["test_job::test_every_input_format_gives_the_embeddings_in_input_order",
           "test_encoder::test_rows_come_back_in_input_order",
           "test_job::test_two_processes_with_jax_distributed_match_one_process",
           "test_throughput::test_four_devices_give_the_same_embeddings_as_one"],
    "29": ["test_job::test_input_changed_during_the_run_is_refused_before_assembly",
           "test_input_failures::test_a_damaged_compressed_input_names_the_file_and_where",
           "test_inputs::test_a_mistyped_field_is_found_in_the_first_record"],
    # numerical
    "30": ["test_encoder::test_outputs_are_finite_with_filler_rows",
           "test_encoder::test_non_finite_embeddings_are_an_error_naming_the_texts",
           "test_job::test_non_finite_embeddings_stop_the_job_naming_file_and_line"],
    "31": ["test_model::test_float32_matmuls_are_pinned_to_highest_precision",
           "test_encoder::test_embedding_is_the_same_alone_beside_long_texts_and_at_any_batch_size",
           "test_throughput::test_compiled_shapes_are_bounded_whatever_the_number_of_texts"],
    # classes
    "A": ["test_never_destroy::test_the_truncation_report_may_not_be_an_input_the_output_or_a_model_file",
          "test_never_destroy::test_an_input_named_like_a_sidecar_is_never_deleted",
          "test_never_destroy::test_the_output_may_not_be_an_input_even_with_overwrite",
          "test_never_destroy::test_no_output_inside_the_model_folder_or_an_input_directory",
          "test_never_destroy::test_no_output_or_report_onto_a_file_behind_a_linked_model_folder",
          "test_never_destroy::test_a_refused_run_leaves_no_files_behind",
          "test_never_destroy::test_convert_refuses_an_existing_destination_and_the_source_itself",
          "test_locations::test_an_alias_of_a_scheme_is_the_same_object",
          "test_locations::test_a_file_url_is_the_local_path_it_names",
          "test_locations::test_an_existing_report_in_a_bucket_is_kept_without_overwrite",
          "test_never_destroy::test_a_glob_that_matches_the_jobs_own_files_leaves_them_out"],
    "B": ["test_state_trust::test_a_damaged_part_is_embedded_again_on_resume",
          "test_throughput::test_a_cache_dir_others_may_write_is_not_used",
          "test_state_trust::test_a_damaged_part_record_is_embedded_again",
          "test_state_trust::test_records_that_lie_are_embedded_again_and_nothing_they_name_is_touched",
          "test_state_trust::test_a_completion_record_that_lies_is_not_believed_and_deletes_nothing_else",
          "test_state_trust::test_without_its_job_record_a_work_folder_is_not_resumed_into_another_job",
          "test_state_trust::test_a_damaged_job_record_is_cleared_by_the_overwrite_its_message_suggests",
          "test_state_trust::test_a_damaged_completion_record_is_a_named_error",
          "test_state_trust::test_already_complete_only_after_the_output_verifies",
          "test_state_trust::test_an_input_edited_in_place_with_its_mtime_restored_is_caught",
          "test_state_trust::test_a_resume_after_a_stop_in_the_middle_of_a_split_is_bit_identical",
          "test_job_edges::test_a_refused_run_with_another_split_size_keeps_the_earlier_work",
          "test_job_edges::test_a_record_with_a_shifted_first_row_is_embedded_again_by_the_next_resume",
          "test_job_edges::test_the_model_is_identified_by_content_not_by_place_or_time",
          "test_job_edges::test_the_model_is_identified_by_the_files_the_loader_reads_and_nothing_else",
          "test_storage::test_a_remote_model_folder_tells_apart_objects_whose_names_once_shared_a_stamp",
          "test_train::test_kill_9_then_resume_gives_the_same_bytes",
          "test_train::test_resume_refuses_changed_settings_and_a_second_start"],
    "C": ["test_lock::test_a_second_run_single_or_multi_process_is_refused_while_the_first_works",
          "test_lock::test_a_live_holder_on_this_host_refuses_and_a_dead_one_loses_the_lock_at_once",
          "test_lock::test_a_release_removes_only_the_lock_file_its_run_holds",
          "test_lock::test_a_lease_in_a_bucket_is_honoured_until_the_store_says_it_expired",
          "test_lock::test_of_runs_racing_for_an_expired_lease_exactly_one_takes_it",
          "test_lock::test_a_host_with_a_slow_clock_does_not_take_over_a_live_lease",
          "test_storage::test_a_held_lock_in_a_bucket_refuses_a_second_run",
          "test_train::test_refusals_name_what_is_at_fault"],
    "D": ["test_model_files::test_type_confusion_in_any_config_file_is_a_named_error",
          "test_job_edges::test_the_model_is_identified_by_the_files_the_loader_reads_and_nothing_else",
          "test_model_files::test_a_field_of_the_wrong_type_names_file_and_field",
          "test_model_files::test_config_json_must_be_a_regular_file_inside_the_folder",
          "test_model_files::test_a_folder_without_tokenizer_files_is_refused",
          "test_model_files::test_layer_norm_eps_must_be_a_finite_positive_number",
          "test_model_files::test_an_oversized_config_is_refused_before_it_is_read"],
    "E": ["test_no_leaks::test_convert_skips_links_that_leave_the_source_and_keeps_permissions",
          "test_no_leaks::test_a_module_path_may_not_leave_the_folder",
          "test_no_leaks::test_a_shard_index_may_not_name_files_outside_the_folder"],
    "F": ["test_input_failures::test_a_damaged_compressed_input_names_the_file_and_where",
          "test_input_failures::test_deep_nesting_and_over_long_lines_are_row_errors_that_skip",
          "test_input_failures::test_pipes_devices_and_empty_directories_are_named",
          "test_input_failures::test_file_names_that_are_not_utf8_work_end_to_end",
          "test_input_failures::test_mixed_id_kinds_stop_at_the_row",
          "test_beam::test_the_id_kind_is_the_runs_not_each_splits",
          "test_tokenize::test_a_multi_megabyte_line_costs_what_its_context_costs"],
    "G": ["test_signals::test_the_first_signal_stops_within_a_batch_and_resume_finishes",
          "test_signals::test_a_second_signal_aborts_leaving_only_committed_state",
          "test_signals::test_a_signal_during_start_up_exits_130_and_leaves_nothing",
          "test_signals::test_a_stop_after_the_last_batch_still_finishes_the_job",
          "test_signals::test_sigterm_to_process_0_waiting_for_a_stalled_peer_is_honoured",
          "test_signals::test_sigterm_while_jax_distributed_starts_exits_130_at_once",
          "test_stops::test_a_second_signal_is_counted_even_when_the_first_handler_ran_once_for_both",
          "test_train::test_sigterm_saves_the_current_step_and_resume_finishes"],
    "M": ["test_tokenize::test_the_bounded_prefix_tokenizes_exactly_like_the_whole_text",
          "test_tokenize::test_added_tokens_spelled_with_deleted_characters_tokenize_like_the_whole_text",
          "test_tokenize::test_added_tokens_that_strip_spaces_or_split_words_tokenize_like_the_whole_text",
          "test_tokenize::test_added_tokens_the_reducer_cannot_keep_apart_leave_the_text_unchanged",
          "test_train::test_the_cached_loss_equals_the_plain_one"],
    "N": ["test_ray::test_the_error_column_has_one_type_in_every_file_of_an_output",
          "test_ray::test_a_batch_without_a_bad_row_still_types_the_error_column"],
    "O": ["test_locations::test_every_spelling_of_a_location_has_one_canonical_form",
          "test_locations::test_an_alias_of_a_scheme_is_the_same_object",
          "test_options::test_a_bad_option_value_is_one_line_naming_the_option",
          "test_options::test_options_that_contradict_each_other_are_named",
          "test_options::test_a_mistyped_beam_option_is_refused_before_beam_sees_it",
          "test_options::test_beam_pipeline_options_pass_before_and_after_the_dashes"],
}


def _listed() -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "RELIABILITY.md").read_text()
    return re.findall(r"^(\d+)\. ", text, re.M) + re.findall(r"^([A-Z])\. ", text, re.M)


def test_every_item_and_class_of_the_list_is_mapped():
    assert sorted(CHECKLIST) == sorted(_listed()) and len(CHECKLIST) == 31 + 10
    assert all(CHECKLIST.values())


@pytest.mark.parametrize("item", sorted(CHECKLIST))
def test_each_mapped_test_exists(item):
    for ref in CHECKLIST[item]:
        module, name = ref.split("::")
        assert callable(getattr(importlib.import_module(f"tests.{module}"), name, None)), f"item {item}: {ref} is gone"
