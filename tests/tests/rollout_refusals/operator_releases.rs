//! Releases the genuine operator publishes that the devices refuse: signed with a key
//! they do not trust, or with an older sequence number.

use super::*;

#[test]
fn a_rollout_signed_with_a_key_the_devices_do_not_trust_is_refused_and_every_device_reports_why() {
    let dir = tempfile::tempdir().unwrap();
    let (_fixture, fleet) = small_fleet(dir.path(), 3, 0);
    let ids = fleet.device_ids();
    // An operator with its own key: the bundle and the documents are signed by it.
    let stranger = FleetKey::generate(&dir.path().join("stranger")).unwrap();
    let (bundle, _) = digits_bundle(dir.path(), "2.0.0", 2, &stranger.signing);
    let rollout_id = "untrusted-key";
    let _operator = fleet
        .operator(&bundle, &stranger.secret_path, &quick_rollout(rollout_id))
        .unwrap();

    let reports = wait_failed(&fleet, &ids, rollout_id, "not a trusted key");
    let stranger_id = perch_runtime::bundle::key_id(&stranger.signing.verifying_key());
    for (id, report) in ids.iter().zip(&reports) {
        let reason = report.reason.as_deref().unwrap();
        assert!(reason.contains(&stranger_id), "{reason}");
        assert_eq!(report.device, *id);
        assert_eq!(
            report.bucket,
            canary::bucket(id.as_bytes(), rollout_id.as_bytes())
        );
        assert_eq!(report.serving, format!("digits {OLD}"));
    }
    assert_old_model_still_serves(&fleet, &ids);
    for id in &ids {
        // Never a download: the document was not acted on.
        let states = states_of(&fleet, id, rollout_id);
        assert!(
            states.iter().all(|s| *s == DeviceState::Failed),
            "{id}: {states:?}"
        );
        let view = fleet.observer().device(id).unwrap();
        assert_eq!(view.duplicate_rollout_reports, 0, "{id}");
    }
    assert!(!fleet.devices()[0].ota_dir.join("download.part").exists());
}

#[test]
fn a_bundle_with_an_older_sequence_number_is_downloaded_then_refused_and_the_old_model_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (fixture, fleet) = small_fleet(dir.path(), 3, 0);
    let ids = fleet.device_ids();
    // Another version, genuinely signed, but the sequence of the bundle they run.
    let (bundle, _) = digits_bundle(dir.path(), "1.1.0", 1, &fixture.key.signing);
    let rollout_id = "older-sequence";
    let _operator = fleet
        .operator(
            &bundle,
            &fixture.key.secret_path,
            &quick_rollout(rollout_id),
        )
        .unwrap();

    let reports = wait_failed(&fleet, &ids, rollout_id, "older sequence");
    for (id, report) in ids.iter().zip(&reports) {
        assert_eq!((report.version.as_str(), report.sequence), ("1.1.0", 1));
        assert_eq!(report.serving, format!("digits {OLD}"), "{id}");
        let states = states_of(&fleet, id, rollout_id);
        assert!(
            states.contains(&DeviceState::Downloading) && states.contains(&DeviceState::Verifying),
            "{id} refused it only after downloading it: {states:?}"
        );
        assert!(!states.contains(&DeviceState::Active), "{id}: {states:?}");
    }
    assert_old_model_still_serves(&fleet, &ids);
}
