//! Waiting for a position (`?min_position=P`): it returns once the model has
//! reached P, and times out with the position reached otherwise.

use std::time::Duration;

use projections::ProjectionError;

use super::{WAIT, created, given};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_position_returns_once_reached_and_times_out_otherwise() {
    let shop = given([created("mug", 1000, 1)]).await;
    let catalog = shop.projections.catalog().clone();
    assert_eq!(catalog.wait_for(1, Duration::ZERO).await, Ok(1), "a reached position answers at once");
    assert_eq!(
        catalog.wait_for(2, Duration::from_millis(20)).await,
        Err(ProjectionError::Timeout { model: "catalog", position: 2, reached: 1 })
    );

    let waiter = tokio::spawn({
        let catalog = catalog.clone();
        async move { catalog.wait_for(2, WAIT).await }
    });
    shop.then([created("cup", 500, 1)]).await;
    let reached = waiter.await.expect("the waiter ends").expect("position 2 is reached");
    assert!(reached >= 2);
    let answer = catalog.get(&super::sku("cup")).expect("queries");
    assert!(answer.position >= 2 && answer.value.is_some(), "read-your-writes: {answer:?}");
    let status = shop.projections.status();
    assert!(status.iter().all(|status| status.checkpoint == 2 && status.lag == 0 && status.head == 2), "{status:?}");
}
