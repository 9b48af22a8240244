//! Who is calling and what they may do.
//!
//! - [`tokens`]: the tokens file: bearer tokens (or their SHA-256 hashes) to tenants and
//!   roles.
//! - [`credentials`]: the tokens file and the operator credential in use, reloaded on
//!   SIGHUP or an `Operator.Reload` call; a revoked token fails its next call and its
//!   Watch streams end.
//! - here: [`Role`], [`Tenant`], and the interceptor that authenticates every call and
//!   puts the caller's [`Tenant`] into the request extensions. Each handler then asks
//!   for the role it needs ([`tenant_of`]).
//!
//! Without a tokens file every call is tenant `default` with the admin role
//! (development mode).

pub mod credentials;
pub mod tokens;

use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

pub use credentials::Credentials;
pub use tokens::{MAX_TENANT_BYTES, TokenMap, TokensError, check_tenant_name};

/// The tenant every call belongs to when the server runs without a tokens file.
pub const DEV_TENANT: &str = "default";

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Open read-only, BeginRead, ReadPages, Watch.
    Read,
    /// Also: write leases, Commit (and the history operations on the tenant's own
    /// databases).
    Write,
    /// Also the Admin service: create, delete, list, info, metrics.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// The SHA-256 digest of a token: what the server keeps and compares.
pub type Digest = [u8; 32];

/// Who is calling: the owner of the databases the call may touch, and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    pub role: Role,
    /// The digest of the token that authenticated the call (`None` in development
    /// mode): how a reload finds the streams a revoked token opened.
    pub credential: Option<Digest>,
}

impl Tenant {
    /// The caller in development mode.
    pub fn dev() -> Self {
        Tenant {
            name: DEV_TENANT.into(),
            role: Role::Admin,
            credential: None,
        }
    }

    /// PERMISSION_DENIED unless this caller's role includes `need` (`what`: the call).
    pub fn require(&self, need: Role, what: &str) -> Result<(), Status> {
        if self.role >= need {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{what} needs the {} role; this token of tenant {} has the {} role",
            need.as_str(),
            self.name,
            self.role.as_str()
        )))
    }
}

/// The token of an `authorization: Bearer <token>` header.
pub(crate) fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Status::unauthenticated(
            "authorization must be 'Bearer <token>'",
        ));
    }
    Ok(token.trim())
}

/// The interceptor in front of the tenant services (Pages, Admin): authenticates the
/// caller against the credentials in use now and records its [`Tenant`].
#[derive(Debug, Clone)]
pub struct Authenticator {
    credentials: Credentials,
}

impl Authenticator {
    pub fn new(credentials: Credentials) -> Self {
        Self { credentials }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let tenant = self.credentials.authenticate(request.metadata())?;
        request.extensions_mut().insert(tenant);
        Ok(request)
    }
}

/// The interceptor in front of the Operator service: only the operator credential.
#[derive(Debug, Clone)]
pub struct OperatorAuthenticator {
    credentials: Credentials,
}

impl OperatorAuthenticator {
    pub fn new(credentials: Credentials) -> Self {
        Self { credentials }
    }
}

impl Interceptor for OperatorAuthenticator {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.credentials.authenticate_operator(request.metadata())?;
        Ok(request)
    }
}

/// The caller's tenant, put there by [`Authenticator`], if its role includes `need`
/// (`what`: the call, for the error).
pub fn tenant_of<T>(request: &Request<T>, need: Role, what: &str) -> Result<Tenant, Status> {
    let tenant = request
        .extensions()
        .get::<Tenant>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no tenant: the request was not authenticated"))?;
    tenant.require(need, what)?;
    Ok(tenant)
}
