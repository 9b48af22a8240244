//! Tenancy from the bearer token. A tokens file maps each token to a tenant (and whether
//! it may use the Admin service); an interceptor puts the caller's [`Tenant`] into the
//! request extensions. Without a tokens file every call is tenant `default`, with admin
//! rights (development mode).
//!
//! ```toml
//! [[token]]
//! token = "secret-a"
//! tenant = "acme"
//! admin = true     # optional, default false
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The tenant every call belongs to when the server runs without a tokens file.
pub const DEV_TENANT: &str = "default";
/// Longest tenant name in bytes.
pub const MAX_TENANT_BYTES: usize = 64;

/// Who is calling: the owner of the databases the call may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    /// May use the Admin service.
    pub admin: bool,
}

/// A tokens file that cannot be used; the server refuses to start.
#[derive(Debug, thiserror::Error)]
#[error("tokens file {}: {problem}", path.display())]
pub struct TokensError {
    pub path: PathBuf,
    pub problem: String,
}

/// Bearer tokens and the tenants they stand for.
#[derive(Clone, Default)]
pub struct TokenMap {
    tokens: HashMap<String, Tenant>,
}

impl std::fmt::Debug for TokenMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenMap({} tokens)", self.tokens.len()) // never print a token
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    tenant: String,
    #[serde(default)]
    admin: bool,
}

/// A tenant name: 1..=64 bytes of ASCII letters, digits, `-`, `_` and `.`.
pub fn check_tenant_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_TENANT_BYTES || !name.chars().all(ok_char) {
        return Err(format!(
            "bad tenant name {name:?}: use 1..={MAX_TENANT_BYTES} ASCII letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

impl TokenMap {
    /// Reads and checks a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let error = |problem: String| TokensError {
            path: path.to_owned(),
            problem,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| error(format!("cannot read it: {e}")))?;
        Self::parse(&text).map_err(error)
    }

    /// Parses the TOML text of a tokens file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile =
            toml::from_str(text).map_err(|e| format!("bad TOML: {}", toml_error(text, &e)))?;
        let mut map = TokenMap::default();
        for (i, entry) in file.token.into_iter().enumerate() {
            let n = i + 1;
            map.insert(&entry.token, &entry.tenant, entry.admin)
                .map_err(|p| format!("[[token]] #{n}: {p}"))?;
        }
        Ok(map)
    }

    /// Adds a token; refuses an empty or duplicate token and a bad tenant name.
    pub fn insert(&mut self, token: &str, tenant: &str, admin: bool) -> Result<(), String> {
        if token.trim().is_empty() {
            return Err("empty token".into());
        }
        check_tenant_name(tenant)?;
        if self.tokens.contains_key(token) {
            return Err(format!("duplicate token (again for tenant {tenant:?})"));
        }
        self.tokens.insert(
            token.to_owned(),
            Tenant {
                name: tenant.to_owned(),
                admin,
            },
        );
        Ok(())
    }

    pub fn tenant(&self, token: &str) -> Option<&Tenant> {
        self.tokens.get(token)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// A TOML error without any of the file's text: toml's own message quotes the line and
/// the value it choked on, which may be a token (the server prints this at start-up).
/// Kept: the line and column, and what was wrong ("invalid type: string, expected a
/// boolean").
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message();
    let message = match ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|p| message.strip_prefix(p).map(|rest| (p, rest)))
    {
        // "invalid type: string \"s3cret\", expected a boolean": keep the kind only.
        Some((prefix, rest)) => {
            let kind = rest.split([' ', '`', '"', ',']).next().unwrap_or_default();
            let expected = rest.rfind(", expected").map_or("", |at| &rest[at..]);
            format!("{prefix}{kind}{expected}")
        }
        None => message.to_owned(),
    };
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
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

/// The interceptor in front of each service: authenticates the caller and records its
/// [`Tenant`] in the request extensions.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// `None`: development mode, every caller is [`DEV_TENANT`] with admin rights.
    tokens: Option<Arc<TokenMap>>,
    /// Refuse (PERMISSION_DENIED) callers without admin rights (the Admin service).
    admin_only: bool,
}

impl Authenticator {
    pub fn new(tokens: Option<Arc<TokenMap>>, admin_only: bool) -> Self {
        Self { tokens, admin_only }
    }

    fn authenticate(&self, metadata: &MetadataMap) -> Result<Tenant, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(Tenant {
                name: DEV_TENANT.into(),
                admin: true,
            });
        };
        let token = bearer(metadata)?;
        tokens
            .tenant(token)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let tenant = self.authenticate(request.metadata())?;
        if self.admin_only && !tenant.admin {
            return Err(Status::permission_denied(format!(
                "tenant {} has no admin rights (set admin = true on its token)",
                tenant.name
            )));
        }
        request.extensions_mut().insert(tenant);
        Ok(request)
    }
}

/// The caller's tenant, put there by [`Authenticator`].
pub fn tenant_of<T>(request: &Request<T>) -> Result<Tenant, Status> {
    request
        .extensions()
        .get::<Tenant>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no tenant: the request was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(auth: &mut Authenticator, header: Option<&str>) -> Result<Tenant, Status> {
        let mut request = Request::new(());
        if let Some(h) = header {
            request.metadata_mut().insert(
                "authorization",
                h.parse().map_err(|_| Status::internal("header"))?,
            );
        }
        let request = auth.call(request)?;
        tenant_of(&request)
    }

    fn map() -> Arc<TokenMap> {
        let text = "[[token]]\ntoken = \"a\"\ntenant = \"acme\"\nadmin = true\n\n[[token]]\ntoken = \"b\"\ntenant = \"beta\"\n";
        Arc::new(TokenMap::parse(text).unwrap_or_default())
    }

    #[test]
    fn parses_tokens() {
        let m = map();
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.tenant("a"),
            Some(&Tenant {
                name: "acme".into(),
                admin: true
            })
        );
        assert_eq!(
            m.tenant("b"),
            Some(&Tenant {
                name: "beta".into(),
                admin: false
            })
        );
        assert!(format!("{m:?}").contains("2 tokens") && !format!("{m:?}").contains("acme"));
    }

    #[test]
    fn rejects_bad_files() {
        let bad = [
            ("[[token]\n", "bad TOML"),
            ("[[token]]\ntoken = \"\"\ntenant = \"a\"\n", "empty token"),
            (
                "[[token]]\ntoken = \"x\"\ntenant = \"a\"\n[[token]]\ntoken = \"x\"\ntenant = \"b\"\n",
                "duplicate",
            ),
            (
                "[[token]]\ntoken = \"x\"\ntenant = \"a b\"\n",
                "bad tenant name",
            ),
            (
                "[[token]]\ntoken = \"x\"\ntenant = \"\"\n",
                "bad tenant name",
            ),
            ("[[token]]\ntoken = \"x\"\n", "bad TOML"),
            (
                "[[token]]\ntoken = \"x\"\ntenant = \"a\"\nadmn = true\n",
                "bad TOML",
            ),
        ];
        for (text, want) in bad {
            let err = TokenMap::parse(text).err().unwrap_or_default();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn errors_never_quote_a_token() {
        let bad = [
            (
                "[[token]]\ntoken = \"SECRET1\" tenant = \"a\"\n",
                "line 2, column 19",
            ),
            ("[[token]]\ntoken = \"SECRET2\ntenant = \"a\"\n", "line 2"),
            (
                "[[token]]\ntoken = 12345\ntenant = \"a\"\n",
                "invalid type: integer, expected a string",
            ),
            (
                "[[token]]\ntoken = \"SECRET4\"\ntenant = \"a\"\nadmin = \"SECRET4\"\n",
                "line 4, column 9: invalid type: string, expected a boolean",
            ),
            (
                "[[token]]\ntoken = 'SECRET5'\ntenant = \"a\"\nadmn = true\n",
                "unknown field `admn`",
            ),
            (
                "[[token]]\ntoken = \"SECRET6\"\ntenant = \"a\"\n[[token]]\ntoken = \"SECRET6\"\ntenant = \"b\"\n",
                "duplicate token",
            ),
        ];
        for (text, want) in bad {
            let err = TokenMap::parse(text).err().unwrap_or_default();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains("SECRET") && !err.contains("12345"), "{err}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let err = TokenMap::load(Path::new("/nonexistent/tokens.toml"))
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(
            err.contains("/nonexistent/tokens.toml") && err.contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn interceptor_sets_tenant() {
        let mut pages = Authenticator::new(Some(map()), false);
        assert_eq!(
            call(&mut pages, Some("Bearer b")).map(|t| t.name).ok(),
            Some("beta".into())
        );
        assert_eq!(
            call(&mut pages, Some("bearer  a ")).map(|t| t.name).ok(),
            Some("acme".into())
        );
        for header in [None, Some("Bearer nope"), Some("Basic a"), Some("Bearer")] {
            let code = call(&mut pages, header).err().map(|s| s.code());
            assert_eq!(code, Some(tonic::Code::Unauthenticated), "{header:?}");
        }
    }

    #[test]
    fn admin_needs_admin_rights() {
        let mut admin = Authenticator::new(Some(map()), true);
        assert!(call(&mut admin, Some("Bearer a")).is_ok());
        let code = call(&mut admin, Some("Bearer b")).err().map(|s| s.code());
        assert_eq!(code, Some(tonic::Code::PermissionDenied));
    }

    #[test]
    fn dev_mode_is_default_admin() {
        let mut admin = Authenticator::new(None, true);
        let t = call(&mut admin, Some("Bearer whatever")).ok();
        assert_eq!(
            t,
            Some(Tenant {
                name: DEV_TENANT.into(),
                admin: true
            })
        );
        assert!(call(&mut admin, None).is_ok());
    }
}
