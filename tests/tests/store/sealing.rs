//! Personal data is sealed under its subject's key and can be forgotten (DESIGN §3.9).

use store::{EventLog, ExpectedVersion, Payload, StoreError};
use tests::{append, event, sealed_event, temp_dir};
use uuid::Uuid;

#[tokio::test]
async fn sealed_payloads_never_reach_the_disk_in_clear_but_read_back_in_clear() {
    let dir = temp_dir();
    let subject = Uuid::now_v7();
    let secret = b"grace.hopper@example.com";
    let plain_marker = b"not-personal-marker-123";
    {
        let log = EventLog::open(dir.path()).expect("opens");
        log.append(append(
            &format!("customer-{subject}"),
            ExpectedVersion::NoStream,
            vec![sealed_event("CustomerRegistered", subject, secret)],
        ))
        .await
        .expect("appends");
        log.append(append("other", ExpectedVersion::Any, vec![event("Plain", plain_marker)])).await.expect("appends");
        let events = log.read_all(1, 10).expect("reads");
        assert_eq!(events[0].subject, Some(subject));
        assert_eq!(events[0].payload, Payload::Plain(secret.to_vec()));
    }
    assert!(tests::files_contain(dir.path(), plain_marker), "the search finds what is on disk in clear");
    assert!(!tests::files_contain(dir.path(), secret), "personal data is on disk in clear");
    let log = EventLog::open(dir.path()).expect("reopens");
    assert_eq!(log.read_all(1, 1).expect("reads")[0].payload, Payload::Plain(secret.to_vec()));
}

#[tokio::test]
async fn a_forgotten_subject_reads_as_forgotten_everywhere_and_the_chain_still_verifies() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    for (subject, email) in [(ada, b"ada@example.com"), (bob, b"bob@example.com")] {
        let stream = format!("customer-{subject}");
        log.append(append(
            &stream,
            ExpectedVersion::NoStream,
            vec![sealed_event("CustomerRegistered", subject, email)],
        ))
        .await
        .expect("appends");
        log.append(append(&stream, ExpectedVersion::Any, vec![sealed_event("CustomerRenamed", subject, b"new name")]))
            .await
            .expect("appends");
    }
    let before = log.verify().expect("verifies");

    let forgotten = log
        .forget(
            ada,
            append(
                &format!("customer-{ada}"),
                ExpectedVersion::Exact(2),
                vec![event("CustomerForgotten", ada.as_bytes())],
            ),
        )
        .await
        .expect("forgets");
    assert_eq!(forgotten.streams[0].version, 3);

    let check = |log: &EventLog| {
        let ada_events = log.read_stream(&format!("customer-{ada}"), 1, 10).expect("reads");
        assert_eq!(
            ada_events.iter().map(|event| &event.payload).collect::<Vec<_>>(),
            vec![&Payload::Forgotten, &Payload::Forgotten, &Payload::Plain(ada.as_bytes().to_vec())]
        );
        assert_eq!(ada_events[0].event_type, "CustomerRegistered", "metadata is intact");
        assert_eq!(ada_events[0].subject, Some(ada));
        let bob_events = log.read_stream(&format!("customer-{bob}"), 1, 10).expect("reads");
        assert_eq!(bob_events[0].payload, Payload::Plain(b"bob@example.com".to_vec()), "others are untouched");
        let report = log.verify().expect("the chain covers the ciphertext, so it still verifies");
        assert_eq!(report.events, before.events + 1);
    };
    check(&log);

    let refused = log
        .append(append("x", ExpectedVersion::Any, vec![sealed_event("CustomerRenamed", ada, b"again")]))
        .await
        .expect_err("forgotten");
    assert_eq!(refused, StoreError::SubjectForgotten { subject: ada });
    let refused = log
        .forget(ada, append("x", ExpectedVersion::Any, vec![event("CustomerForgotten", b"")]))
        .await
        .expect_err("twice");
    assert_eq!(refused, StoreError::SubjectForgotten { subject: ada });
    drop(log);
    check(&EventLog::open(dir.path()).expect("reopens"));
}

#[tokio::test]
async fn an_append_cannot_seal_for_the_subject_it_forgets() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let subject = Uuid::now_v7();
    let refused = log
        .forget(
            subject,
            append("customer-x", ExpectedVersion::Any, vec![sealed_event("CustomerRegistered", subject, b"data")]),
        )
        .await
        .expect_err("contradiction");
    assert_eq!(refused, StoreError::SubjectForgotten { subject });
    assert_eq!(log.head(), 0);
}
