//! `shoplog forget`: crypto-shred one customer (DESIGN §3.9), offline in a stopped
//! server's data dir, or online through `POST /admin/customers/{id}/forget`.
//!
//! Either way the command goes through [`commands::CommandService::forget_customer`]
//! (offline here, online in the server), so both write the same events.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use commands::{CommandContext, CommandError};
use domain::{CustomerId, DomainError};
use uuid::Uuid;

use crate::config::Secret;

/// How long the online command waits for the server's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of a server's answer the online command reads.
const REPLY_LEN_MAX: usize = 64 * 1024;

/// The most characters of a server's problem detail repeated on the one error line.
const DETAIL_LEN_MAX: usize = 200;

/// `--customer`, and exactly one of the two modes: `--data`, or `--server` with
/// `--token`. clap refuses both modes at once; a missing flag is refused in
/// [`run`], because clap names it only on a second line, which the one-line error
/// drops.
#[derive(Debug, clap::Args)]
#[command(override_usage = "shoplog forget --customer ID (--data DIR | --server URL --token T)")]
pub(super) struct ForgetArgs {
    /// The customer's id (required)
    #[arg(long, value_name = "ID", env = "SHOPLOG_CUSTOMER")]
    customer: Option<Uuid>,
    /// Forget offline, in the data directory of a stopped server (when both are
    /// set, the one on the command line wins over the environment's)
    #[arg(long, value_name = "DIR", env = "SHOPLOG_DATA", value_parser = super::unquoted_path)]
    pub(super) data: Option<PathBuf>,
    /// Forget through a running server instead, such as http://127.0.0.1:8080
    #[arg(long, value_name = "URL", env = "SHOPLOG_SERVER", value_parser = super::unquoted)]
    pub(super) server: Option<String>,
    /// The running server's admin token (with --server)
    #[arg(long, value_name = "T", env = "SHOPLOG_TOKEN", value_parser = super::unquoted_secret, hide_env_values = true)]
    token: Option<Secret>,
}

pub(super) fn run(args: ForgetArgs) -> anyhow::Result<ExitCode> {
    let customer_id = CustomerId::new(args.customer.ok_or_else(|| anyhow::anyhow!("--customer ID is required"))?);
    let forgotten = match (&args.data, &args.server, &args.token) {
        (_, Some(server), Some(token)) => online(server, token, customer_id)?,
        (_, Some(_), None) => anyhow::bail!("--server needs --token T, the server's admin token"),
        (Some(data), None, _) => offline(data, customer_id)?,
        (None, None, _) => {
            anyhow::bail!("say where: --data DIR (a stopped server's data dir) or --server URL --token T")
        }
    };
    say!("forgot customer {customer_id} at position {}", forgotten.position);
    if !forgotten.cancelled_orders.is_empty() {
        let orders: Vec<String> = forgotten.cancelled_orders.iter().map(Uuid::to_string).collect();
        say!("cancelled their unpaid orders, releasing the stock: {}", orders.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a forget wrote: the position of its last event, and the customer's
/// unpaid orders it cancelled.
struct Forgotten {
    position: u64,
    cancelled_orders: Vec<Uuid>,
}

/// Forget in the log in `data`.
fn offline(data: &Path, customer_id: CustomerId) -> anyhow::Result<Forgotten> {
    // Its log is a copy: the forget goes to the primary, and reaches the copy from there.
    super::not_a_replica(data, "forget the customer on the primary (its --data, or --server URL of the primary)")?;
    let log = super::open_offline(data).map_err(|error| suggest_server(error, data))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = runtime.block_on(async {
        let service = commands::CommandService::new(log)?;
        service.forget_customer(&CommandContext::new(actor()), customer_id, None).await
    });
    match outcome {
        Ok(outcome) => Ok(Forgotten {
            position: outcome.position(),
            cancelled_orders: outcome.cancelled_orders().into_iter().map(|order_id| order_id.get()).collect(),
        }),
        Err(CommandError::Domain(DomainError::CustomerNotFound { .. })) => {
            anyhow::bail!("no customer {customer_id}")
        }
        Err(CommandError::Domain(DomainError::CustomerAlreadyForgotten { .. })) => {
            anyhow::bail!("customer {customer_id} is already forgotten")
        }
        Err(error) => Err(anyhow::Error::new(error).context(format!("forgetting customer {customer_id} failed"))),
    }
}

/// A data dir held by a running server: that server can do it (`--server`).
fn suggest_server(error: anyhow::Error, data: &Path) -> anyhow::Error {
    let locked = error.downcast_ref::<super::InUse>().is_some();
    if !locked {
        return error;
    }
    anyhow::anyhow!(
        "data directory {} is in use by a running server: forget through it with --server URL --token T, \
         or stop it first",
        data.display()
    )
}

/// Who the events name as their actor: the CLI and the operating-system user.
fn actor() -> String {
    let user: String = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default()
        .chars()
        .filter(|char| char.is_ascii_alphanumeric() || matches!(char, '.' | '_' | '-'))
        .take(32)
        .collect();
    if user.is_empty() { "cli".to_owned() } else { format!("cli:{user}") }
}

/// Forget through the server at `server`.
fn online(server: &str, token: &Secret, customer_id: CustomerId) -> anyhow::Result<Forgotten> {
    let url = super::server_url(server, &format!("/admin/customers/{customer_id}/forget"))?;
    let base = commands::relay::shown(server.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, body) = runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
        let mut response = client
            .post(url)
            .bearer_auth(token.expose())
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {base}"))?;
        super::refused_by_server(&response)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.with_context(|| format!("the server at {base} broke off its answer"))?
        {
            body.extend_from_slice(&chunk);
            anyhow::ensure!(body.len() <= REPLY_LEN_MAX, "the server at {base} answered over {REPLY_LEN_MAX} bytes");
        }
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })?;
    let detail = one_line(&super::problem_detail(&body));
    match status.as_u16() {
        200 => {
            let reply: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let position = reply["position"]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("the server at {base} answered 200 without a position"))?;
            // A server from before forgets cancelled orders sends no list.
            let cancelled_orders = match reply.get("cancelled_orders") {
                None => Vec::new(),
                Some(orders) => serde_json::from_value(orders.clone()).map_err(|_| {
                    anyhow::anyhow!("the server at {base} answered 200 with cancelled_orders that are not order ids")
                })?,
            };
            Ok(Forgotten { position, cancelled_orders })
        }
        404 if detail == "no such route" => anyhow::bail!("the server at {base} has no forget route (is it shoplog?)"),
        404 if detail.starts_with("no such route on a read replica") => {
            anyhow::bail!("the server at {base} is a read replica: forget the customer on the primary")
        }
        404 => anyhow::bail!("no customer {customer_id}"),
        _ => anyhow::bail!("the server answered {status}: {detail}"),
    }
}

/// `text` on one line, bounded: it ends the CLI's one error line.
fn one_line(text: &str) -> String {
    text.chars().map(|char| if char.is_control() { ' ' } else { char }).take(DETAIL_LEN_MAX).collect()
}
