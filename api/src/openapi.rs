//! The API describes itself: `GET /openapi.json` (OpenAPI 3.1) and `GET /docs`
//! (Swagger UI, vendored into the binary so it renders offline).
//!
//! Every handler in `routes` carries its own `#[utoipa::path]`, and the router is
//! built from those annotations (`utoipa_axum::routes!`), so no route is served
//! undocumented and no documented route is missing. This module holds what the
//! handlers share: the document's info, the three bearer schemes (one per role, all
//! `Authorization: Bearer`), the problem+json responses the handlers refer to, and
//! the statuses the middleware can answer on any route (408, 500, 503).

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, Ref, RefOr, Required};
use utoipa::{IntoParams, Modify, OpenApi, ToResponse};
use utoipa_swagger_ui::SwaggerUi;

use crate::error::{FieldError, PROBLEM_JSON, Problem};

/// Where the document is served.
pub const SPEC_PATH: &str = "/openapi.json";
/// Where Swagger UI is served (`/docs` redirects to `/docs/`).
pub const DOCS_PATH: &str = "/docs";

/// The security scheme of each role, by its name in the document.
pub const ADMIN: &str = "admin";
pub const VIEWER: &str = "viewer";
pub const CUSTOMER: &str = "customer";
pub const REPLICA: &str = "replica";

/// The parts of the document no handler owns.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "shoplog",
        description = "An event-sourced shop backend. Commands append events to a hash-chained log; \
            every error is RFC 9457 `application/problem+json`. Command responses carry \
            `ETag: \"<version>\"`; send it back as `If-Match` to make that version expected. \
            An `Idempotency-Key` makes a command safe to retry: the same key returns the first \
            response, the same key with another request is 409. Unknown routes answer 404 and \
            methods a route does not take 405 (with `Allow`), both problem+json too.",
        license(name = "MIT", identifier = "MIT")
    ),
    components(
        schemas(Problem, FieldError),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            ModelNotFound,
            Conflict,
            PreconditionFailed,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unprocessable,
            TooManyRequests,
            RequestTimeout,
            Internal,
            Unavailable,
            MethodNotAllowed
        )
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "products", description = "The catalog (admin)"),
        (name = "customers", description = "Registration and login (public)"),
        (name = "cart", description = "The logged-in customer's cart"),
        (name = "orders", description = "Paying, cancelling (the customer) and shipping (admin) orders"),
        (name = "audit", description = "The log itself, read directly (admin)"),
        (name = "operations", description = "Health, readiness, metrics and this document")
    )
)]
pub struct ApiDoc;

/// One bearer scheme per role: the header is the same, the token says who you are.
/// No route served yet takes the viewer (the dashboards of DESIGN §6 will).
#[derive(Debug)]
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            (ADMIN, "The admin token from config (`--admin-token`, or generated into `<data>/admin-token`)."),
            (VIEWER, "The read-only dashboards' token from config (`--viewer-token`)."),
            (CUSTOMER, "A customer's token from `POST /api/v1/sessions` (valid 24 h)."),
            (
                REPLICA,
                "The read replicas' token from config (`--replica-token`): the log's records as stored, nothing else.",
            ),
        ] {
            let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build();
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
    }
}

/// A problem+json response with `description`, and the headers it always carries.
fn problem(description: &str, headers: &[(&str, Type, &str)]) -> Response {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    headers
        .iter()
        .fold(
            ResponseBuilder::new().description(description).content(PROBLEM_JSON, content),
            |response, (name, kind, description)| {
                let header = HeaderBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(kind.clone())))
                    .description(Some(*description));
                response.header(*name, header.build())
            },
        )
        .build()
}

macro_rules! problems {
    ($($name:ident: $description:literal $(, $header:literal: $kind:ident = $header_description:literal)*;)+) => {
        $(
            #[doc = $description]
            #[derive(Debug)]
            pub struct $name;

            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    (stringify!($name), problem($description, &[$(($header, Type::$kind, $header_description)),*]).into())
                }
            }
        )+
    };
}

problems! {
    BadRequest: "Malformed JSON, or a malformed `Idempotency-Key` or `If-Match` header";
    Unauthorized: "Missing or invalid credentials",
        "WWW-Authenticate": String = "`Bearer`";
    Forbidden: "The token is valid but its role may not do this";
    NotFound: "No such thing (or not yours), or no such route";
    ModelNotFound: "No such thing (or not yours) in the read model: it may come with a later position",
        "X-Projection-Position": Integer = "The log position the read model had reached (absent for an id \
        that cannot be one)";
    Conflict: "A business rule or a concurrency conflict; a checkout refused for products out of stock or \
        discontinued names their `skus`, a reused `Idempotency-Key` with another request lands here too";
    PreconditionFailed: "`If-Match` names another version than the stream's";
    PayloadTooLarge: "The request body is over 64 KiB";
    UnsupportedMediaType: "A non-empty body that is not `application/json`";
    Unprocessable: "Invalid fields (each named in `errors`), or a rule on the input alone";
    TooManyRequests: "Too many login attempts for this email or from this address",
        "Retry-After": Integer = "Seconds to wait";
    RequestTimeout: "The request (its body included) had not arrived within the server's request timeout; \
        nothing was done";
    Internal: "An internal error; the body reveals nothing, the server log has the cause";
    Unavailable: "The event log is not accepting writes (after a failed fsync, on a full disk, or shutting down), a read \
        model is not ready, or the request took longer than the server's request timeout once it had \
        arrived: a command may then have been carried out, and sending it again with the same \
        `Idempotency-Key` gets its outcome";
    MethodNotAllowed: "Any route, for a method it does not take",
        "Allow": String = "The methods the route takes";
}

/// The problems every authenticated command route can answer, listed once:
/// `responses((status = 200, …), CommandProblems)`.
#[derive(Debug)]
pub struct CommandProblems;

impl utoipa::IntoResponses for CommandProblems {
    fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
        [
            ("400", "BadRequest"),
            ("401", "Unauthorized"),
            ("403", "Forbidden"),
            ("404", "NotFound"),
            ("409", "Conflict"),
            ("412", "PreconditionFailed"),
            ("413", "PayloadTooLarge"),
            ("415", "UnsupportedMediaType"),
            ("422", "Unprocessable"),
            ("503", "Unavailable"),
        ]
        .into_iter()
        .map(|(status, name)| (status.to_owned(), Ref::from_response_name(name).into()))
        .collect()
    }
}

/// A header parameter of every command.
fn header(name: &str, description: &str, schema: ObjectBuilder) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema.schema_type(Type::String)))
        .build()
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters (HTTP trims
/// the ends, so they are not spaces).
#[derive(Debug)]
pub struct IdempotencyKey;

impl IntoParams for IdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema =
            ObjectBuilder::new().min_length(Some(1)).max_length(Some(255)).pattern(Some("^[!-~]([\\t -~]*[!-~])?$"));
        vec![header(
            "Idempotency-Key",
            "Makes the command safe to retry: the same key (per caller) with the same method, path and \
             JSON value (key order and spacing aside) returns the first response (with `duplicate: true`) \
             and writes nothing; the same key with another request is 409. A request refused with a 4xx \
             keeps no key: sent again, it is decided afresh.",
            schema,
        )]
    }
}

/// The `If-Match` header: an `ETag` this API gave out.
#[derive(Debug)]
pub struct IfMatch;

impl IntoParams for IfMatch {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new().pattern(Some("^(W/)?(\"[0-9]{1,19}\"|[0-9]{1,19})$")).examples(["\"3\""]);
        vec![header(
            "If-Match",
            "Makes the given version of the command's main stream expected (412 if it is at another).",
            schema,
        )]
    }
}

/// The finished document: the handlers' paths plus what the middleware adds.
pub fn document(mut openapi: Document) -> Document {
    for item in openapi.paths.paths.values_mut() {
        for operation in operations(item) {
            optional_body_is_not_null(operation);
            // The timeout and panic layers wrap every route.
            for (status, name) in [("408", "RequestTimeout"), ("500", "Internal"), ("503", "Unavailable")] {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| Ref::from_response_name(name).into());
            }
        }
    }
    // Served by utoipa-swagger-ui rather than by a handler of ours.
    let spec = OperationBuilder::new()
        .tag("operations")
        .operation_id(Some("openapi"))
        .summary(Some("This document"))
        .response(
            "200",
            ResponseBuilder::new().description("The OpenAPI 3.1 document").content(
                "application/json",
                ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::Object))).build(),
            ),
        )
        .build();
    let docs = OperationBuilder::new()
        .tag("operations")
        .operation_id(Some("docs"))
        .summary(Some("Swagger UI over this document (redirects to `/docs/`)"))
        .response(
            "200",
            ResponseBuilder::new().description("The Swagger UI page").content(
                "text/html",
                ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::String))).build(),
            ),
        )
        .response(
            "303",
            ResponseBuilder::new().description("See `/docs/`").header("Location", HeaderBuilder::new().build()),
        )
        .build();
    openapi.paths.paths.insert(SPEC_PATH.to_owned(), PathItem::new(HttpMethod::Get, spec));
    openapi.paths.paths.insert(DOCS_PATH.to_owned(), PathItem::new(HttpMethod::Get, docs));
    openapi
}

/// utoipa reads an `Option<Body>` request body as "may be left out", which is right,
/// and as "may be `null`", which is not: the extractor reads an empty body as `{}`
/// but refuses `null`. Drop the `null`.
fn optional_body_is_not_null(operation: &mut Operation) {
    let Some(RefOr::T(body)) = operation.request_body.as_mut() else {
        return;
    };
    for content in body.content.values_mut() {
        let RefOr::T(content) = content else {
            continue;
        };
        content.schema = match content.schema.take() {
            Some(RefOr::T(Schema::OneOf(mut one_of))) => {
                one_of.items.retain(|item| {
                    !matches!(item, RefOr::T(Schema::Object(object)) if object.schema_type == SchemaType::Type(Type::Null))
                });
                if one_of.items.len() == 1 { one_of.items.pop() } else { Some(RefOr::T(Schema::OneOf(one_of))) }
            }
            other => other,
        };
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// `GET /openapi.json` and Swagger UI at `/docs`. The spec URL is registered here
/// only, once: registering it a second time makes axum panic with "Overlapping
/// method route".
pub fn docs(openapi: Document) -> SwaggerUi {
    // Swagger UI would send the document to validator.swagger.io for a badge: the
    // page must work offline and the document stays here.
    let config = utoipa_swagger_ui::Config::default().validator_url("none");
    SwaggerUi::new(DOCS_PATH).url(SPEC_PATH, document(openapi)).config(config)
}
