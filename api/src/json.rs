//! The JSON form of a stored event (DESIGN §6), with secrets redacted.

use serde::Serialize;
use store::RecordedEvent;

use crate::error::ApiError;

/// `{position, stream, version, event_id, type, schema_version, recorded_at, actor,
/// correlation_id, causation_id, data, forgotten, subject, hash}`. `data` is `null`
/// for an event whose personal data was forgotten; `subject` is only there for an
/// event that carries personal data.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventJson {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub event_id: uuid::Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u16,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub correlation_id: uuid::Uuid,
    pub causation_id: uuid::Uuid,
    pub data: Option<serde_json::Value>,
    pub forgotten: bool,
    /// The event's personal data was withheld from this reader (`data` is
    /// null): the viewer token reads dashboards, not customers' emails and
    /// names; and a read replica holds none (its log is a copy of the records
    /// as stored, sealed, without the keys).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub withheld: bool,
    /// The data subject (a customer id) whose key seals the event's data, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<uuid::Uuid>,
    pub hash: String,
}

/// Whether `subject` is a customer registered and not forgotten by what the log recorded.
pub fn registered_as_recorded(service: &commands::CommandService, subject: uuid::Uuid) -> Result<bool, ApiError> {
    service.customer_registered_as_recorded(domain::CustomerId::new(subject)).map_err(ApiError::internal)
}

impl EventJson {
    /// The same event with its personal data (the data of an event sealed
    /// under a customer) withheld, for a reader who may not see it.
    pub fn without_personal_data(mut self) -> Self {
        if self.subject.is_some() && self.data.is_some() {
            self.data = None;
            self.withheld = true;
        }
        self
    }

    /// The event as a read replica shows it: sealed data it cannot read is
    /// withheld, not forgotten, unless the subject was forgotten by what the
    /// log recorded ([`commands::CommandService::customer_registered_as_recorded`]).
    pub fn shown_on_a_replica(self, service: &commands::CommandService) -> Result<Self, ApiError> {
        self.shown_as_recorded(|subject| registered_as_recorded(service, subject))
    }

    /// [`EventJson::shown_on_a_replica`], told by `registered` whether a
    /// subject is a customer registered and not forgotten by what the log recorded.
    pub fn shown_as_recorded(
        mut self,
        mut registered: impl FnMut(uuid::Uuid) -> Result<bool, ApiError>,
    ) -> Result<Self, ApiError> {
        if let Some(subject) = self.subject.filter(|_| self.forgotten)
            && registered(subject)?
        {
            self.forgotten = false;
            self.withheld = true;
        }
        Ok(self)
    }

    /// The event with its secrets (password hashes) redacted: what the API shows.
    pub fn from_recorded(event: RecordedEvent) -> Result<Self, ApiError> {
        Self::build(event, true)
    }

    /// The event whole, secrets included: only for `shoplog export --with-secrets`.
    pub fn from_recorded_with_secrets(event: RecordedEvent) -> Result<Self, ApiError> {
        Self::build(event, false)
    }

    fn build(event: RecordedEvent, redact: bool) -> Result<Self, ApiError> {
        let decoded = commands::codec::decode(&event).map_err(ApiError::internal)?;
        let forgotten = decoded.is_none();
        let data = decoded
            .map(|decoded| serde_json::to_value(if redact { decoded.without_secrets() } else { decoded }))
            .transpose()
            .map_err(ApiError::internal)?;
        Ok(EventJson {
            position: event.position,
            stream: event.stream,
            version: event.version,
            event_id: event.event_id,
            event_type: event.event_type,
            schema_version: event.schema_version,
            recorded_at: event.recorded_at,
            actor: event.actor,
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            data,
            forgotten,
            withheld: false,
            subject: event.subject,
            hash: hex::encode(event.hash),
        })
    }
}
