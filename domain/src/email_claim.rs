//! Email claim: who holds one email address (stream `email-<key>`). It makes
//! emails unique through the log itself: registering appends to the claim stream
//! with its expected version, so of two racing registrations exactly one wins.

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::event::Event;
use crate::value::{CustomerId, EmailKey};

/// A customer took an email address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailClaimed {
    pub email_key: EmailKey,
    pub customer_id: CustomerId,
}

/// The customer holding an email address was forgotten: anyone may claim it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailReleased {
    pub email_key: EmailKey,
    pub customer_id: CustomerId,
}

/// The events of an email claim stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailClaimEvent {
    Claimed(EmailClaimed),
    Released(EmailReleased),
}

impl EmailClaimEvent {
    /// The key whose stream this event belongs to.
    pub fn email_key(&self) -> &EmailKey {
        match self {
            EmailClaimEvent::Claimed(event) => &event.email_key,
            EmailClaimEvent::Released(event) => &event.email_key,
        }
    }
}

/// An email claim's state. `EmailClaim::default()` is the state before its first
/// event. `Released` keeps who held it last, for the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EmailClaim {
    #[default]
    Unclaimed,
    Claimed {
        email_key: EmailKey,
        customer_id: CustomerId,
    },
    Released {
        email_key: EmailKey,
        customer_id: CustomerId,
    },
}

impl EmailClaim {
    /// The customer holding the address now, if any (login finds the customer
    /// through this).
    pub fn claimed_by(&self) -> Option<CustomerId> {
        match self {
            EmailClaim::Claimed { customer_id, .. } => Some(*customer_id),
            EmailClaim::Unclaimed | EmailClaim::Released { .. } => None,
        }
    }
}

/// What can happen to a claim; both come from customer decisions
/// ([`crate::customer::decide`]), which compose this decider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailClaimCommand {
    Claim { email_key: EmailKey, customer_id: CustomerId },
    Release { email_key: EmailKey, customer_id: CustomerId },
}

/// An unclaimed or released address can be claimed; a claimed one cannot, not
/// even by its holder. Only the holder's claim can be released.
pub fn decide(claim: &EmailClaim, command: &EmailClaimCommand) -> Result<Vec<Event>, DomainError> {
    match command {
        EmailClaimCommand::Claim { email_key, customer_id } => match claim {
            EmailClaim::Unclaimed | EmailClaim::Released { .. } => {
                Ok(vec![EmailClaimed { email_key: email_key.clone(), customer_id: *customer_id }.into()])
            }
            EmailClaim::Claimed { .. } => Err(DomainError::EmailTaken),
        },
        EmailClaimCommand::Release { email_key, customer_id } => {
            if claim.claimed_by() != Some(*customer_id) {
                return Err(DomainError::EmailNotClaimed { customer_id: *customer_id });
            }
            Ok(vec![EmailReleased { email_key: email_key.clone(), customer_id: *customer_id }.into()])
        }
    }
}

/// Applies one event; each simply records who holds the address now.
pub fn evolve(_claim: EmailClaim, event: &EmailClaimEvent) -> EmailClaim {
    match event {
        EmailClaimEvent::Claimed(claimed) => {
            EmailClaim::Claimed { email_key: claimed.email_key.clone(), customer_id: claimed.customer_id }
        }
        EmailClaimEvent::Released(released) => {
            EmailClaim::Released { email_key: released.email_key.clone(), customer_id: released.customer_id }
        }
    }
}
