//! Our own extractors, so a bad request gets problem+json like everything else.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use serde::de::DeserializeOwned;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{RefOr, Required};
use utoipa::{IntoParams, PartialSchema};

use crate::error::{ApiError, FieldError};

/// `axum::extract::Path` with our rejection (404 for a path that does not parse).
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// A query string read into `T`, like `axum::extract::Query`, but a query that
/// does not read gets a 422 naming every bad parameter at once (a value that does
/// not parse, a parameter unknown or repeated, one required and left out), each
/// under its own name, as a body does (see [`every_error`]).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + IntoParams> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let first = match read_query::<T>(query) {
            Ok(value) => return Ok(ApiQuery(value)),
            Err(error) => error,
        };
        let pairs = Pairs(form_urlencoded::parse(query.as_bytes()).into_owned().collect());
        let required = T::into_params(|| Some(ParameterIn::Query))
            .into_iter()
            .filter(|parameter| matches!(parameter.required, Required::True))
            .map(|parameter| parameter.name)
            .collect();
        Err(ApiError::Validation(every_error::<T>(pairs, first, required)))
    }
}

/// The query of a route that takes no parameters: any is a 422 naming it, as an
/// unknown one is on every other route (`ApiQuery<NoQuery>`).
#[derive(Debug, serde::Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NoQuery {}

/// A query string's parameters, in order, decoded.
struct Pairs(Vec<(String, String)>);

/// `query` (still encoded) read into `T`, or the first error.
fn read_query<T: DeserializeOwned>(query: &str) -> Result<T, FieldError> {
    let parameters = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(parameters).map_err(|error| field_error(&error))
}

/// The largest accepted `Idempotency-Key`.
const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// [`crate::BODY_LEN_MAX`] as a `Content-Length`.
const BODY_LEN_MAX_U64: u64 = crate::BODY_LEN_MAX as u64;

/// A command's request: the JSON body (an empty body reads as `{}`), its
/// `Idempotency-Key` and `If-Match` headers, and a hash of what was asked, so a
/// repeated key can be told from a reused one.
#[derive(Debug)]
pub struct CommandInput<T> {
    pub body: T,
    pub idempotency_key: Option<String>,
    pub if_match: Option<u64>,
    pub request_hash: [u8; 32],
}

impl<S: Send + Sync, T: DeserializeOwned + PartialSchema> FromRequest<S> for CommandInput<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let idempotency_key = idempotency_key(&parts.headers)?;
        let if_match = if_match(&parts.headers)?;
        let request_hash = {
            let mut hasher = blake3::Hasher::new();
            hasher.update(parts.method.as_str().as_bytes());
            hasher.update(&[0]);
            // The path as the router reads it: `mug%2D1` and `mug-1` name one product.
            hasher.update(&percent_encoding::percent_decode_str(parts.uri.path()).collect::<Vec<u8>>());
            hasher.update(&[0]);
            hasher
        };
        let (bytes, headers) = body_bytes(Request::from_parts(parts, body), state).await?;
        let body = parse_body(&bytes, &headers)?;
        let mut hasher = request_hash;
        if idempotency_key.is_some() {
            hasher.update(&canonical_json(&bytes));
        }
        Ok(CommandInput { body, idempotency_key, if_match, request_hash: *hasher.finalize().as_bytes() })
    }
}

/// A request's body, read whole, and its headers. A body declared too long is
/// refused at once, not read (or waited for); one that turns out too long, or
/// breaks off, too.
async fn body_bytes<S: Send + Sync>(request: Request, state: &S) -> Result<(Bytes, HeaderMap), ApiError> {
    let declared = request.headers().get(axum::http::header::CONTENT_LENGTH);
    if declared.and_then(|len| len.to_str().ok()?.parse::<u64>().ok()).is_some_and(|len| len > BODY_LEN_MAX_U64) {
        return Err(ApiError::PayloadTooLarge(crate::BODY_LEN_MAX));
    }
    let headers = request.headers().clone();
    let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(crate::BODY_LEN_MAX)
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })?;
    Ok((bytes, headers))
}

/// No fields: the body may be `{}` or empty.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// The body of a route that reads nothing from it (a rebuild acts on its path):
/// empty or `{}`, and anything else refused as a command's body would be (400,
/// 413, 415, 422 naming an unknown field), so that a body meant for something
/// else is not taken in silence.
#[derive(Debug)]
pub struct EmptyBody;

impl<S: Send + Sync> FromRequest<S> for EmptyBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (bytes, headers) = body_bytes(request, state).await?;
        parse_body::<Empty>(&bytes, &headers)?;
        Ok(EmptyBody)
    }
}

/// The body as the JSON value it means, for telling a repeated request from
/// another one under the same `Idempotency-Key`: object keys sorted, no
/// whitespace, `81.0` as `81`, an empty body as `{}`. A client that serializes its
/// body again for a retry (other key order, other spacing) repeats the request;
/// another value is another request (409). Only called on a body that parsed.
///
/// A `password` is left out: the hash is kept with the key in the log, and a
/// fast hash of a password there could be guessed against, where the password
/// is otherwise stored only as its argon2id hash (DESIGN §5). So two
/// registrations under one key that differ only in their password are the same
/// request: the second is answered the first's response and writes nothing.
fn canonical_json(bytes: &[u8]) -> Vec<u8> {
    let value = match bytes.iter().all(u8::is_ascii_whitespace) {
        true => serde_json::Value::Object(serde_json::Map::new()),
        false => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(mut value) => {
                if let Some(fields) = value.as_object_mut() {
                    fields.remove("password");
                }
                integral_floats_as_integers(value)
            }
            // Bytes that do not parse as JSON never reach this; no password in them.
            Err(_) => return Vec::new(),
        },
    };
    // A map of `serde_json` keeps its keys sorted (no `preserve_order`).
    serde_json::to_vec(&value).unwrap_or_default()
}

/// A command's body as `T`. Most bodies read straight into `T`; one that does
/// not (an error to report, a float such as `81.0` for an integer, a repeated
/// field) is read again through `serde_json::Value`, which gives the answer
/// every body got before this shortcut: the same `T`, or the errors of every
/// field at once (see [`every_error`]).
fn parse_body<T: DeserializeOwned + PartialSchema>(bytes: &[u8], headers: &HeaderMap) -> Result<T, ApiError> {
    let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
    if first == Some(&b'{')
        && is_json(headers)
        && let Ok(body) = serde_json::from_slice(bytes)
    {
        return Ok(body);
    }
    let body = match first {
        None => serde_json::Value::Object(serde_json::Map::new()),
        Some(_) => {
            if !is_json(headers) {
                return Err(ApiError::UnsupportedMediaType);
            }
            serde_json::from_slice(bytes).map_err(|error| match error.classify() {
                serde_json::error::Category::Data => ApiError::validation("body", error.to_string()),
                _ => ApiError::BadRequest(format!("malformed JSON: {error}")),
            })?
        }
    };
    // serde would read a struct from an array too, by position; the API takes objects only.
    let body = integral_floats_as_integers(body);
    if !body.is_object() {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    // `serde_json::Value` keeps the last of a key given twice; the request is
    // refused instead, as reading it into `T` would (a body's meaning must not
    // hang on which of two values a reader keeps).
    if let Some((field, key)) = repeated_key(bytes) {
        return Err(ApiError::validation(field, format!("duplicate field `{key}`")));
    }
    let first = match body.read() {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    let RefOr::T(Schema::Object(schema)) = T::schema() else {
        return Err(ApiError::Validation(every_error::<T>(body, first, Vec::new())));
    };
    let errors = every_error::<T>(body, first, schema.required.clone());
    Err(ApiError::Validation(errors.into_iter().map(|error| in_documented_range(&schema, error)).collect()))
}

/// A top-level number field's error in the words of the range the API
/// documents for it (its schema's `minimum` and `maximum`), not its Rust
/// type's: `initial_stock` takes 0 to 1000000000, not all of a `u32`.
fn in_documented_range(schema: &utoipa::openapi::schema::Object, error: FieldError) -> FieldError {
    fn shown(number: &utoipa::Number) -> String {
        match number {
            utoipa::Number::Int(number) => number.to_string(),
            utoipa::Number::UInt(number) => number.to_string(),
            utoipa::Number::Float(number) => number.to_string(),
        }
    }
    // The type's range, as [`plainly`] words it; each end the schema gives replaces it.
    let Some((min, max)) = error.message.strip_prefix(WHOLE_NUMBER).and_then(|range| {
        let (min, max) = range.strip_prefix(" from ")?.split_once(" to ")?;
        Some((min.to_owned(), max.to_owned()))
    }) else {
        return error;
    };
    let Some(RefOr::T(Schema::Object(field))) = schema.properties.get(&error.field) else { return error };
    let min = field.minimum.as_ref().map_or(min, shown);
    let max = field.maximum.as_ref().map_or(max, shown);
    FieldError { message: format!("{WHOLE_NUMBER} from {min} to {max}"), ..error }
}

/// The path (`lines[0].sku`, as a field error names it) and the name of the
/// first key that an object in `bytes` gives twice, if any. Only called on a
/// body that parsed.
fn repeated_key(bytes: &[u8]) -> Option<(String, String)> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    /// Walks one JSON value at `path`, noting the first repeated key in `found`.
    struct Walk<'a> {
        path: String,
        found: &'a mut Option<(String, String)>,
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("any JSON value")
        }

        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }

        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }

        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }

        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }

        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }

        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
            let mut index = 0;
            while items
                .next_element_seed(Walk { path: format!("{}[{index}]", self.path), found: self.found })?
                .is_some()
            {
                index += 1;
            }
            Ok(())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = fields.next_key::<String>()? {
                let path = match self.path.is_empty() {
                    true => key.clone(),
                    false => format!("{}.{key}", self.path),
                };
                if self.found.is_none() && !seen.insert(key.clone()) {
                    *self.found = Some((path.clone(), key));
                }
                fields.next_value_seed(Walk { path, found: self.found })?;
            }
            Ok(())
        }
    }

    let mut found = None;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    Walk { path: String::new(), found: &mut found }.deserialize(&mut deserializer).ok()?;
    found
}

/// A field error as serde found it: the field its path names, or for the
/// request itself (a field missing, unknown or repeated) the one serde names in
/// backticks.
fn field_error<E: std::fmt::Display>(error: &serde_path_to_error::Error<E>) -> FieldError {
    let message = plainly(error.inner().to_string());
    let field = match error.path().to_string().as_str() {
        "." => message.split('`').nth(1).unwrap_or("body").to_owned(),
        path => path.to_owned(),
    };
    FieldError { field, message }
}

/// How every error of a number that does not read into its field begins.
const WHOLE_NUMBER: &str = "must be a whole number";

/// serde's and the standard library's words for a number that does not read
/// into its field ("invalid value: integer `-1`, expected u32", "invalid digit
/// found in string"), in the API's: the whole numbers the field takes. Others
/// as they are.
fn plainly(message: String) -> String {
    fn range<T: std::fmt::Display>(min: T, max: T) -> String {
        format!("{WHOLE_NUMBER} from {min} to {max}")
    }
    let ranges = [
        ("u8", range(u8::MIN.into(), u64::from(u8::MAX))),
        ("u16", range(0, u64::from(u16::MAX))),
        ("u32", range(0, u64::from(u32::MAX))),
        ("u64", range(0, u64::MAX)),
        ("usize", range(0, u64::MAX)),
        ("i32", range(i64::from(i32::MIN), i64::from(i32::MAX))),
        ("i64", range(i64::MIN, i64::MAX)),
    ];
    if let Some((_, plain)) = ranges.into_iter().find(|(name, _)| message.ends_with(&format!(", expected {name}"))) {
        return plain;
    }
    match message.as_str() {
        "invalid digit found in string" | "cannot parse integer from empty string" => {
            format!("{WHOLE_NUMBER}, 0 or more")
        }
        "number too large to fit in target type" => "is too large".to_owned(),
        _ => message,
    }
}

/// A request's named fields (a body's top-level keys, a query's parameters),
/// which can be read into a type and have a field taken out.
trait Fields {
    /// Every field's name, once each, in the order given.
    fn names(&self) -> Vec<String>;

    fn read<T: DeserializeOwned>(&self) -> Result<T, FieldError>;

    /// Take `name` out (every occurrence); false when it is not there.
    fn remove(&mut self, name: &str) -> bool;
}

impl Fields for serde_json::Value {
    fn names(&self) -> Vec<String> {
        self.as_object().map(|fields| fields.keys().cloned().collect()).unwrap_or_default()
    }

    fn read<T: DeserializeOwned>(&self) -> Result<T, FieldError> {
        serde_path_to_error::deserialize(self).map_err(|error| field_error(&error))
    }

    fn remove(&mut self, name: &str) -> bool {
        self.as_object_mut().is_some_and(|fields| fields.remove(name).is_some())
    }
}

impl Fields for Pairs {
    fn names(&self) -> Vec<String> {
        // A set, not a search of the list: a long query may hold thousands.
        let mut seen = std::collections::HashSet::new();
        self.0.iter().filter(|(name, _)| seen.insert(name.as_str())).map(|(name, _)| name.clone()).collect()
    }

    fn read<T: DeserializeOwned>(&self) -> Result<T, FieldError> {
        read_query(&form_urlencoded::Serializer::new(String::new()).extend_pairs(&self.0).finish())
    }

    fn remove(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|(given, _)| given != name);
        self.0.len() != before
    }
}

/// Every error of a request's fields that do not read into `T`, where serde
/// stops at the first: a client fixing a request learns all that is wrong with
/// it at once. Each field that has an error (a value of the wrong type or
/// range, a field unknown) is named with serde's message and taken out, and the
/// rest read again, until what is left reads or a field is missing. Then every
/// `required` field of `T` (from its OpenAPI schema or parameters, which the
/// same derive keeps true to it) that the request left out is named. Values
/// that read but break a rule (a sku with a space) are checked only once the
/// request reads, by the handler or the command.
fn every_error<T: DeserializeOwned>(
    mut fields: impl Fields,
    first: FieldError,
    required: Vec<String>,
) -> Vec<FieldError> {
    let given = &fields.names();
    let mut errors = Vec::new();
    let mut error = first;
    // Each turn but the last takes a field out: at most one turn a field, and
    // one more; and no more than a 422 names, so a request of thousands of unknown
    // fields is not read thousands of times nor answered with thousands of errors.
    for _ in 0..=given.len().min(FIELD_ERRORS_MAX) {
        if !fields.remove(key_of(given, &error.field)) {
            break;
        }
        errors.push(error);
        match fields.read::<T>() {
            Ok(_) => return errors,
            Err(next) => error = next,
        }
    }
    let missing: Vec<FieldError> = required
        .into_iter()
        .filter(|field| !given.contains(field))
        .map(|field| FieldError { message: format!("missing field `{field}`"), field })
        .collect();
    // The last error, unless it is of a field already named: one taken out
    // (which serde then finds missing) or one the schema finds missing.
    let top = key_of(given, &error.field);
    if !given.iter().any(|field| field == top) && !missing.iter().any(|missing| missing.field == top) {
        errors.push(error);
    }
    errors.extend(missing);
    errors.truncate(FIELD_ERRORS_MAX);
    errors
}

/// The most field errors one 422 names: the first ones, in the order above.
const FIELD_ERRORS_MAX: usize = 20;

/// The request's field an error's path starts at: `lines[0].sku` → `lines`, and
/// a field whose own name holds a `.` or `[` as it is.
fn key_of<'a>(given: &[String], path: &'a str) -> &'a str {
    match given.iter().any(|field| field == path) {
        true => path,
        false => path.split(['.', '[']).next().unwrap_or(path),
    }
}

/// JSON has one number type, and JSON Schema counts `81.0` as the integer 81: so
/// do we, for any float with no fraction that fits an `i64` or `u64`.
fn integral_floats_as_integers(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(number) if number.is_f64() => {
            let float = number.as_f64().unwrap_or(f64::NAN);
            // Both bounds are powers of two, exact as f64; `as` is exact inside them.
            let integral = float.fract() == 0.0;
            if integral && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&float) {
                Value::from(float as i64)
            } else if integral && (0.0..18_446_744_073_709_551_616.0).contains(&float) {
                Value::from(float as u64)
            } else {
                Value::Number(number)
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(integral_floats_as_integers).collect()),
        Value::Object(fields) => {
            Value::Object(fields.into_iter().map(|(name, value)| (name, integral_floats_as_integers(value))).collect())
        }
        other => other,
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            let media = media.trim().to_ascii_lowercase();
            media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
        })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = single(headers, "idempotency-key", "Idempotency-Key")? else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".to_owned()))?;
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LEN_MAX {
        return Err(ApiError::BadRequest(format!("Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} characters")));
    }
    Ok(Some(key.to_owned()))
}

/// The one value of header `name`, if given; given twice, with two values that
/// could differ, is a 400 naming it (which one would count is anyone's guess).
pub(crate) fn single<'a>(headers: &'a HeaderMap, name: &str, shown: &str) -> Result<Option<&'a HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::BadRequest(format!("{shown} must be given once")));
    }
    Ok(first)
}

/// `If-Match: "<version>"`. A weak `W/` prefix is taken as the same version,
/// against RFC 9110's strong comparison: a proxy that compresses responses
/// (nginx with gzip) weakens the ETags it passes on, and its clients could
/// otherwise never match. `*` and lists are refused (400): a command expects
/// one version.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = single(headers, header::IF_MATCH.as_str(), "If-Match")? else {
        return Ok(None);
    };
    let bad = || ApiError::BadRequest("If-Match must be an ETag from this API, like \"3\"".to_owned());
    let text = value.to_str().map_err(|_| bad())?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    // An entity tag is quoted (RFC 9110); a bare version is taken too, leniently.
    let version = text.strip_prefix('"').and_then(|text| text.strip_suffix('"')).unwrap_or(text);
    if version.is_empty() || !version.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(bad());
    }
    version.parse().map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    struct Restock {
        quantity: u32,
        #[serde(default)]
        note: Option<String>,
    }

    fn parse(body: &str, content_type: &str) -> Result<Restock, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().expect("a header value"));
        parse_body(body.as_bytes(), &headers)
    }

    fn json(body: &str) -> Result<Restock, ApiError> {
        parse(body, "application/json")
    }

    /// The one field a validation error names, and its message.
    fn validation(result: Result<Restock, ApiError>) -> (String, String) {
        match result {
            Err(ApiError::Validation(errors)) => {
                assert_eq!(errors.len(), 1);
                (errors[0].field.clone(), errors[0].message.clone())
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn validation_message(result: Result<Restock, ApiError>) -> String {
        validation(result).1
    }

    #[test]
    fn a_body_reads_into_its_type_directly_or_through_a_json_value_with_one_answer() {
        assert_eq!(json(r#" {"quantity": 3}"#).ok(), Some(Restock { quantity: 3, note: None }));
        assert_eq!(json(r#"{"quantity": 3, "note": "x"}"#).ok(), Some(Restock { quantity: 3, note: Some("x".into()) }));
        // Through the value: an integral float is an integer.
        assert_eq!(json(r#"{"quantity": 3.0}"#).ok(), Some(Restock { quantity: 3, note: None }));
        // A field given twice is refused, even with one value twice, as a query parameter is.
        for body in [r#"{"quantity": 1, "quantity": 2}"#, r#"{"quantity": 1, "\u0071uantity": 1}"#] {
            assert_eq!(validation(json(body)), ("quantity".to_owned(), "duplicate field `quantity`".to_owned()));
        }
        // Each error names its field: the value's, or the one missing or unknown.
        // A number that does not fit says which whole numbers do, in no Rust type's name.
        let whole = ("quantity".to_owned(), "must be a whole number from 0 to 4294967295".to_owned());
        for body in [r#"{"quantity": 3.5}"#, r#"{"quantity": -3}"#, r#"{"quantity": 1e20}"#, r#"{"quantity": "3"}"#] {
            assert_eq!(validation(json(body)), whole, "{body}");
        }
        let (field, message) = validation(json(r#"{"quantity": 3, "extra": 1}"#));
        assert_eq!((field.as_str(), message.contains("unknown field")), ("extra", true), "{message}");
        let (field, message) = validation(json(r#"{}"#));
        assert_eq!((field.as_str(), message.contains("missing field `quantity`")), ("quantity", true), "{message}");
        assert_eq!(validation(json("[3]")), ("body".to_owned(), "must be a JSON object".to_owned()));
        assert!(
            matches!(json(r#"{"quantity": "#), Err(ApiError::BadRequest(message)) if message.starts_with("malformed JSON"))
        );
        assert!(validation_message(json(" \n")).contains("missing field `quantity`"), "an empty body reads as {{}}");
    }

    #[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only read, for its errors")]
    struct AddLine {
        sku: String,
        #[schema(minimum = 1, maximum = 99)]
        quantity: u32,
        note: Option<String>,
        #[serde(default)]
        lines: Vec<u32>,
    }

    /// Every error a body gets, as (field, message).
    fn every(body: &str) -> Vec<(String, String)> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().expect("a header value"));
        match parse_body::<AddLine>(body.as_bytes(), &headers) {
            Err(ApiError::Validation(errors)) => errors.into_iter().map(|error| (error.field, error.message)).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn fields(errors: &[(String, String)]) -> Vec<&str> {
        errors.iter().map(|(field, _)| field.as_str()).collect()
    }

    #[test]
    fn a_body_gets_the_errors_of_every_field_at_once_not_the_first_only() {
        // Every required field left out, in the order the type declares them.
        let errors = every("{}");
        assert_eq!(fields(&errors), ["sku", "quantity"]);
        assert_eq!(errors[1].1, "missing field `quantity`");
        // Unknown fields and values of the wrong type (in key order), then what is missing.
        let errors = every(r#"{"quantity": "two", "extra": 1, "note": 5, "lines": [1, "x"]}"#);
        assert_eq!(fields(&errors), ["extra", "lines[1]", "note", "quantity", "sku"], "{errors:?}");
        assert!(errors[0].1.starts_with("unknown field `extra`"), "{errors:?}");
        // A field with a documented range is told that range, one without it its type's.
        assert_eq!(errors[3].1, "must be a whole number from 1 to 99", "{errors:?}");
        assert_eq!(errors[1].1, "must be a whole number from 0 to 4294967295", "{errors:?}");
        assert!(errors[2].1.starts_with("invalid type: integer `5`, expected a string"), "{errors:?}");
        let errors = every(r#"{"sku": "mug", "quantity": 1e12}"#);
        assert_eq!(errors, [("quantity".to_owned(), "must be a whole number from 1 to 99".to_owned())]);
        // A field taken out for its bad value is not named again as missing.
        assert_eq!(fields(&every(r#"{"sku": "mug", "quantity": -1}"#)), ["quantity"]);
        // An optional field's bad value alone: that one error.
        assert_eq!(fields(&every(r#"{"sku": "mug", "quantity": 1, "note": 5}"#)), ["note"]);
        assert_eq!(fields(&every(r#"{"sku": 5, "quantity": 1, "colour": "red"}"#)), ["colour", "sku"]);
        // At most 20 errors, however many fields are wrong.
        let many: Vec<String> = (0..500).map(|n| format!("\"x{n:03}\": 1")).collect();
        let errors = every(&format!("{{{}}}", many.join(", ")));
        assert_eq!(errors.len(), FIELD_ERRORS_MAX);
        assert_eq!((errors[0].0.as_str(), errors[19].0.as_str()), ("x000", "x019"));
        // A key given twice deep in the body is named by its path; the first such key only.
        let repeated =
            r#"{"sku": "mug", "quantity": 1, "lines": [1], "x": [{"a": 1}, {"b": {"c": 1, "c": 2}, "b": 3}]}"#;
        assert_eq!(every(repeated), [("x[1].b.c".to_owned(), "duplicate field `c`".to_owned())]);
        assert_eq!(repeated_key(br#"{"a": {"b": 1}, "c": {"b": 2}}"#), None, "one name in two objects");
        // An unknown field whose name looks like a path is taken out whole.
        assert_eq!(fields(&every(r#"{"a.b": 1, "quantity": 1}"#)), ["a.b", "sku"]);
    }

    #[derive(Debug, serde::Deserialize, IntoParams, PartialEq)]
    #[serde(deny_unknown_fields)]
    #[into_params(parameter_in = Query)]
    struct Page {
        stream: String,
        from: Option<u64>,
        limit: Option<usize>,
    }

    async fn query(query: &str) -> Result<Page, ApiError> {
        let request = Request::builder().uri(format!("/events?{query}")).body(()).expect("a request");
        let (mut parts, ()) = request.into_parts();
        ApiQuery::<Page>::from_request_parts(&mut parts, &()).await.map(|ApiQuery(page)| page)
    }

    async fn query_errors(text: &str) -> Vec<(String, String)> {
        match query(text).await {
            Err(ApiError::Validation(errors)) => errors.into_iter().map(|error| (error.field, error.message)).collect(),
            other => panic!("expected a validation error for {text:?}, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_query_gets_the_errors_of_every_parameter_at_once_each_under_its_name() {
        let page = query("stream=a%20b&from=%31&limit=2").await.ok();
        assert_eq!(page, Some(Page { stream: "a b".to_owned(), from: Some(1), limit: Some(2) }));
        // Bad values and unknown parameters in the order given, then what is missing.
        let errors = query_errors("from=abc&colour=red&limit=-1").await;
        assert_eq!(fields(&errors), ["from", "colour", "limit", "stream"], "{errors:?}");
        assert_eq!(errors[0].1, "must be a whole number, 0 or more");
        assert_eq!(errors[2].1, "must be a whole number, 0 or more", "{errors:?}");
        assert!(errors[1].1.starts_with("unknown field `colour`"), "{errors:?}");
        assert_eq!(errors[3].1, "missing field `stream`");
        // A repeated parameter is named once, and a good one is not named at all.
        let errors = query_errors("stream=s&from=1&from=2&limit=x").await;
        assert_eq!(fields(&errors), ["from", "limit"], "{errors:?}");
        assert!(errors[0].1.starts_with("duplicate field `from`"), "{errors:?}");
        assert_eq!(fields(&query_errors("").await), ["stream"]);
        // At most 20 errors, however many parameters are wrong.
        let many: Vec<String> = (0..500).map(|n| format!("x{n:03}=1")).collect();
        let errors = query_errors(&many.join("&")).await;
        assert_eq!(errors.len(), FIELD_ERRORS_MAX);
        assert_eq!((errors[0].0.as_str(), errors[19].0.as_str()), ("x000", "x019"));
    }

    #[test]
    fn a_body_that_is_not_json_is_refused_even_when_it_would_parse() {
        assert!(matches!(parse(r#"{"quantity": 3}"#, "text/plain"), Err(ApiError::UnsupportedMediaType)));
        assert_eq!(parse(r#"{"quantity": 3}"#, "application/merge-patch+json").ok().map(|r| r.quantity), Some(3));
    }
}
