//! Customer: registration and forgetting (stream `customer-<uuid>`), decided
//! together with the email's claim (stream `email-<key>`, see [`crate::email_claim`]).
//!
//! # Forgotten customers
//!
//! `CustomerRegistered` is the only event that holds personal data, so the store
//! seals it under the customer's key ([`crate::Event::subject`]). Forgetting
//! appends `CustomerForgotten` and deletes that key; from then on the
//! registration reads back without a payload. The shell folds such an
//! unreadable registration as the customer's `CustomerForgotten` (a log
//! restored to a position before a forget holds it without the forget):
//! [`evolve`] takes `CustomerForgotten` from any state, `Unregistered`
//! included, to [`Customer::Forgotten`], which keeps the id and nothing else.

use serde::{Deserialize, Serialize};

use crate::email_claim::{self, EmailClaim, EmailClaimCommand};
use crate::error::DomainError;
use crate::event::Event;
use crate::value::{CustomerId, CustomerName, Email, EmailKey, PasswordHash};

/// A customer signed up. Personal data: sealed under the customer's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRegistered {
    pub customer_id: CustomerId,
    pub email: Email,
    pub name: CustomerName,
    pub password_hash: PasswordHash,
}

/// A customer's personal data was crypto-shredded; the id stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerForgotten {
    pub customer_id: CustomerId,
}

/// The events of a customer stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerEvent {
    Registered(CustomerRegistered),
    Forgotten(CustomerForgotten),
}

impl CustomerEvent {
    /// The customer whose stream this event belongs to.
    pub fn customer_id(&self) -> CustomerId {
        match self {
            CustomerEvent::Registered(event) => event.customer_id,
            CustomerEvent::Forgotten(event) => event.customer_id,
        }
    }
}

/// What a registered customer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerProfile {
    pub customer_id: CustomerId,
    pub email: Email,
    pub name: CustomerName,
    pub password_hash: PasswordHash,
}

/// A customer's state. `Customer::default()` is the state before the first event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Customer {
    #[default]
    Unregistered,
    Registered(CustomerProfile),
    Forgotten {
        customer_id: CustomerId,
    },
}

/// Sign a customer up. The shell has validated the password (`Password::parse`),
/// hashed it, and computed `email_key` from `email.normalized()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterCustomer {
    pub customer_id: CustomerId,
    pub email: Email,
    pub email_key: EmailKey,
    pub name: CustomerName,
    pub password_hash: PasswordHash,
}

/// Crypto-shred a customer. The shell computes `email_key` from the email in the
/// customer's state before the key is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgetCustomer {
    pub customer_id: CustomerId,
    pub email_key: EmailKey,
}

/// The customer commands; both need the customer's and the email claim's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerCommand {
    Register(RegisterCustomer),
    Forget(ForgetCustomer),
}

/// Decides a customer command over the customer's state, the state of the
/// claim stream named by the command's `email_key`, and the state of the
/// customer who holds that claim (`Customer::Unregistered` when nobody does).
///
/// Register yields `CustomerRegistered` (customer stream) and `EmailClaimed`
/// (email stream); forget yields `CustomerForgotten` and, when this customer
/// holds the claim, `EmailReleased`. Decisions: a claim held by someone else
/// (the address was already released and claimed again) is left alone by a
/// forget; a claim whose holder is forgotten holds nothing, and a registration
/// releases it before claiming the address (a log restored to a position
/// before a forget keeps the forget, since the key is gone, but not the
/// `EmailReleased` that went with it).
pub fn decide(
    customer: &Customer,
    claim: &EmailClaim,
    holder: &Customer,
    command: &CustomerCommand,
) -> Result<Vec<Event>, DomainError> {
    match command {
        CustomerCommand::Register(register) => {
            if *customer != Customer::Unregistered {
                return Err(DomainError::CustomerAlreadyExists { customer_id: register.customer_id });
            }
            let mut claim = claim.clone();
            let mut released = Vec::new();
            if let (Some(holder_id), Customer::Forgotten { customer_id }) = (claim.claimed_by(), holder)
                && holder_id == *customer_id
            {
                let release =
                    EmailClaimCommand::Release { email_key: register.email_key.clone(), customer_id: holder_id };
                released = email_claim::decide(&claim, &release)?;
                for event in &released {
                    if let Event::EmailClaim(event) = event {
                        claim = email_claim::evolve(claim, event);
                    }
                }
            }
            let claimed = email_claim::decide(
                &claim,
                &EmailClaimCommand::Claim { email_key: register.email_key.clone(), customer_id: register.customer_id },
            )?;
            let registered = CustomerRegistered {
                customer_id: register.customer_id,
                email: register.email.clone(),
                name: register.name.clone(),
                password_hash: register.password_hash.clone(),
            };
            Ok(std::iter::once(registered.into()).chain(released).chain(claimed).collect())
        }
        CustomerCommand::Forget(forget) => {
            let customer_id = forget.customer_id;
            match customer {
                Customer::Unregistered => return Err(DomainError::CustomerNotFound { customer_id }),
                Customer::Forgotten { .. } => return Err(DomainError::CustomerAlreadyForgotten { customer_id }),
                Customer::Registered(_) => {}
            }
            let released = if claim.claimed_by() == Some(customer_id) {
                email_claim::decide(
                    claim,
                    &EmailClaimCommand::Release { email_key: forget.email_key.clone(), customer_id },
                )?
            } else {
                Vec::new()
            };
            Ok(std::iter::once(CustomerForgotten { customer_id }.into()).chain(released).collect())
        }
    }
}

/// The forgetting that a log restored to a position before a forget lacks: the
/// customer reads as forgotten there (their key is gone, so their registration
/// is unreadable) though the log records no `CustomerForgotten`, nor the
/// cancellation of their unpaid orders that went with it. `forgotten_recorded`
/// says whether the log holds their `CustomerForgotten`. Yields that event, to
/// which the shell adds the cancellations (as a forget does); the email claim
/// stays (the address is unreadable), and a registration of that address
/// releases it, as `decide` says.
pub fn complete_forget(
    customer: &Customer,
    forgotten_recorded: bool,
    customer_id: CustomerId,
) -> Result<Vec<Event>, DomainError> {
    match customer {
        Customer::Unregistered => Err(DomainError::CustomerNotFound { customer_id }),
        Customer::Forgotten { .. } if !forgotten_recorded => Ok(vec![CustomerForgotten { customer_id }.into()]),
        // Registered ones are forgotten by `decide`.
        _ => Err(DomainError::CustomerAlreadyForgotten { customer_id }),
    }
}

/// Applies one event (see the module docs for forgotten customers). Total: a
/// second registration, which `decide` never emits, changes nothing.
pub fn evolve(customer: Customer, event: &CustomerEvent) -> Customer {
    match (customer, event) {
        (Customer::Unregistered, CustomerEvent::Registered(registered)) => Customer::Registered(CustomerProfile {
            customer_id: registered.customer_id,
            email: registered.email.clone(),
            name: registered.name.clone(),
            password_hash: registered.password_hash.clone(),
        }),
        (_, CustomerEvent::Forgotten(forgotten)) => Customer::Forgotten { customer_id: forgotten.customer_id },
        (customer, CustomerEvent::Registered(_)) => customer,
    }
}
