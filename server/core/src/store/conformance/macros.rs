//! [`conformance_tests!`](crate::conformance_tests): one test per suite function for a
//! store.

/// Generates one test per conformance function for a store.
///
/// ```ignore
/// pagewire_server_core::conformance_tests! {
///     #[tokio::test(start_paused = true)]
///     fixture: Some(((), MemoryStore::with_clock(Clock::tokio()))),
///     time: TestTime::Paused,
/// }
/// ```
///
/// `fixture` is evaluated (inside the async test, so it may `.await`) once per test to an
/// `Option<(keep_alive, store)>`: `store` is a `PageStore` value, `keep_alive` anything
/// that must outlive the test (a temporary database); `None` skips the test (the fixture
/// says why). `time` is the [`TestTime`](crate::store::conformance::TestTime).
/// The using crate needs a `tokio` dependency with the `macros` feature.
#[macro_export]
macro_rules! conformance_tests {
    (#[$test:meta] fixture: $fixture:expr, time: $time:expr $(,)?) => {
        $crate::conformance_tests!(@plain [$test] $fixture;
            read_your_writes_at_versions,
            unwritten_pages_are_zeros,
            snapshot_reads_at_old_versions,
            truncate_then_grow_reads_zeros,
            failed_commits_change_nothing,
            commit_id_retry_after_release,
            lease_exclusivity,
            tenant_isolation,
            create_list_delete,
            recreated_database_starts_empty,
            begin_read_change_lists,
            page_size_change,
            read_errors,
            concurrent_commits_one_wins,
            concurrent_acquires_one_wins,
            large_streaming_commit,
            matches_reference_model,
            as_of_version_reads_that_version,
            as_of_time_picks_the_version_then,
            gc_keeps_what_a_reader_began,
            gc_frees_space_and_keeps_newest_whole,
            gc_never_reads_wrong_data,
            gc_caps_one_tenants_window,
            huge_growth_is_a_range,
            change_lists_stop_at_their_limit,
            precheck_answers_as_commit_would,
            every_create_is_a_new_incarnation,
            every_version_has_its_tag,
            commits_for_another_database_are_refused,
            fork_shares_pages_and_isolates_both_sides,
            fork_of_a_fork_and_regrowth_hide_the_source,
            branches_outlive_a_deleted_source,
            restore_points_keep_versions_past_retention,
        );
        $crate::conformance_tests!(@timed [$test] $fixture, $time;
            epoch_fencing_after_expiry,
            lease_renew_and_release,
            a_retried_acquire_gets_the_lease_it_was_granted,
            gc_keeps_newest_window_and_pins,
            pins_stop_at_their_max_age,
        );
    };
    (@plain [$test:meta] $fixture:expr; $($name:ident),* $(,)?) => {$(
        #[$test]
        async fn $name() -> $crate::store::conformance::Outcome {
            let Some((_keep_alive, store)) = $fixture else { return Ok(()) };
            $crate::store::conformance::$name(&store).await
        }
    )*};
    (@timed [$test:meta] $fixture:expr, $time:expr; $($name:ident),* $(,)?) => {$(
        #[$test]
        async fn $name() -> $crate::store::conformance::Outcome {
            let Some((_keep_alive, store)) = $fixture else { return Ok(()) };
            $crate::store::conformance::$name(&store, &$time).await
        }
    )*};
}
