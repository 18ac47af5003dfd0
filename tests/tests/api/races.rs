//! Correct under contention, through HTTP: the last units of a product, and one
//! email registered twice at once.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Barrier;

use super::TestApp;

/// Commands that all change one stream (restocks of one product), sent without
/// pause by 64 clients, each win in turn: none gives up for contention while
/// its deadline runs, however many attempts it takes (a cap of 50 attempts
/// answered some of them 409 within a second), and every unit is counted. The
/// deadline is long here: a slow machine must not make it the one that ends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_restocking_one_product_without_pause_all_succeed() {
    const CLIENTS: usize = 64;
    const RESTOCKS: usize = 8;
    let app = Arc::new(
        TestApp::spawn_with(|config| {
            config.command_retry_ms = 60_000;
            config.request_timeout_ms = 120_000;
        })
        .await,
    );
    app.create_product("busy", 700, 1).await;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (app, barrier) = (Arc::clone(&app), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let mut refused = Vec::new();
                for _ in 0..RESTOCKS {
                    let reply =
                        app.post("/api/v1/products/busy/restock", Some(super::ADMIN), json!({"quantity": 1})).await;
                    if reply.status != StatusCode::OK {
                        refused.push(reply);
                    }
                }
                refused
            })
        })
        .collect();
    for client in clients {
        let refused = client.await.expect("the client ends");
        assert!(refused.is_empty(), "{} refused, the first: {:?}", refused.len(), refused.first());
    }
    let version = app.log().stream_version("product-busy").expect("reads");
    assert_eq!(version, 1 + (CLIENTS * RESTOCKS) as u64, "the creation and every restock");
    app.log().verify().expect("verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_customers_racing_for_ten_units_get_ten_orders_and_thirty_out_of_stock_answers() {
    // A long retry deadline: a slow `fdatasync` on a busy machine must not be
    // answered as contention; what is counted is out of stock.
    let app = Arc::new(
        TestApp::spawn_with(|config| {
            config.command_retry_ms = 60_000;
            config.request_timeout_ms = 120_000;
        })
        .await,
    );
    app.create_product("last", 700, 10).await;
    let mut tokens = Vec::new();
    for index in 0..40 {
        let token = app.customer(&format!("racer{index}@example.com")).await;
        assert_eq!(app.add_to_cart(&token, "last", 1).await.status, StatusCode::OK);
        tokens.push(token);
    }
    let barrier = Arc::new(Barrier::new(tokens.len()));
    let racers: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let (app, barrier) = (Arc::clone(&app), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                app.checkout(&token).await
            })
        })
        .collect();
    let (mut placed, mut out_of_stock) = (0, 0);
    for racer in racers {
        let reply = racer.await.expect("racer ends");
        match reply.status.as_u16() {
            201 => placed += 1,
            409 => {
                assert_eq!(reply.body["skus"], json!(["last"]), "{reply:?}");
                out_of_stock += 1;
            }
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
    assert_eq!((placed, out_of_stock), (10, 30));
    let events = app.events_of("product-last").await;
    let reserved = events.iter().filter(|event| event["type"] == "StockReserved").count();
    assert_eq!(reserved, 10, "no oversell");
    app.log().verify().expect("verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_racing_registrations_of_one_email_give_one_201_and_one_409() {
    let app = Arc::new(TestApp::spawn().await);
    let barrier = Arc::new(Barrier::new(2));
    let racers: Vec<_> = ["Zoe@Example.com", "zoe@example.COM"]
        .into_iter()
        .map(|email| {
            let (app, barrier) = (Arc::clone(&app), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                app.post("/api/v1/customers", None, json!({"email": email, "name": "Zoe", "password": "correct horse"}))
                    .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for racer in racers {
        let reply = racer.await.expect("racer ends");
        if reply.status == 409 {
            reply.problem(409);
        }
        statuses.push(reply.status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [201, 409]);
}
