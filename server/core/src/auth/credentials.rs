//! The credentials in use: the tokens file and the operator credential, replaced as a
//! whole by [`Credentials::reload`] (SIGHUP, `Operator.Reload`). A reload that fails
//! keeps what is in use. Every call is checked against the credentials current when it
//! arrives, so a revoked token fails its next call (its lease renewals included); Watch
//! streams, which outlive any one check, wait on [`Credentials::revoked`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use subtle::ConstantTimeEq as _;
use tokio::sync::watch;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::tokens::{self, TokenMap, TokensError};
use super::{Digest, Tenant, bearer};

/// Where the credentials come from, to read them again.
#[derive(Debug, Clone, Default)]
struct Sources {
    tokens: Option<PathBuf>,
    operator: Option<PathBuf>,
}

/// One consistent set of credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Set {
    /// `None`: development mode (every call is tenant `default`, admin).
    tokens: Option<TokenMap>,
    /// The operator token's digest.
    operator: Option<Digest>,
}

struct Inner {
    sources: Sources,
    current: RwLock<Arc<Set>>,
    /// Bumped at every reload that changed something.
    generation: watch::Sender<u64>,
}

/// The server's credentials, shared by every interceptor and stream (cheap to clone).
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Default for Credentials {
    /// Development mode: no tokens, no operator credential.
    fn default() -> Self {
        Self::fixed(None)
    }
}

/// The operator credential in `path`: one token (or `sha256:<hex>`) on its first line.
fn operator_digest(path: &Path) -> Result<Digest, TokensError> {
    let text = tokens::read(path)?;
    let line = text.lines().next().unwrap_or_default().trim();
    tokens::stored_digest(line).map_err(|problem| TokensError {
        path: path.to_owned(),
        problem: format!("operator token: {problem}"),
    })
}

impl Sources {
    fn read(&self) -> Result<Set, TokensError> {
        let tokens = self.tokens.as_deref().map(TokenMap::load).transpose()?;
        let operator = self.operator.as_deref().map(operator_digest).transpose()?;
        if let (Some(map), Some(op), Some(path)) = (&tokens, &operator, &self.operator)
            && map.contains(op)
        {
            return Err(TokensError {
                path: path.clone(),
                problem: "the operator token is also a tenant's token in the tokens \
                          file: the operator credential must be separate"
                    .into(),
            });
        }
        Ok(Set { tokens, operator })
    }
}

impl Credentials {
    /// Credentials that never change: `tokens` (`None`: development mode), no operator.
    pub fn fixed(tokens: Option<TokenMap>) -> Self {
        Self::new(
            Sources::default(),
            Set {
                tokens,
                operator: None,
            },
        )
    }

    /// The tokens file `tokens` (none: development mode) and the operator token file
    /// `operator`, read now and again at each [`Credentials::reload`].
    pub fn from_files(tokens: Option<&Path>, operator: Option<&Path>) -> Result<Self, TokensError> {
        let sources = Sources {
            tokens: tokens.map(Path::to_owned),
            operator: operator.map(Path::to_owned),
        };
        let set = sources.read()?;
        Ok(Self::new(sources, set))
    }

    fn new(sources: Sources, set: Set) -> Self {
        Self {
            inner: Arc::new(Inner {
                sources,
                current: RwLock::new(Arc::new(set)),
                generation: watch::Sender::new(0),
            }),
        }
    }

    fn current(&self) -> Arc<Set> {
        self.inner.current.read().clone()
    }

    /// Reads the files again. On an error nothing changes and the error says why.
    /// Returns what is in use now, for the log.
    pub fn reload(&self) -> Result<String, TokensError> {
        let set = self.inner.sources.read()?;
        let changed = {
            let mut current = self.inner.current.write();
            let changed = **current != set;
            *current = Arc::new(set);
            changed
        };
        if changed {
            self.inner.generation.send_modify(|g| *g += 1);
        }
        Ok(self.describe())
    }

    /// What is in use, never a token: for logs.
    pub fn describe(&self) -> String {
        let set = self.current();
        let tokens = match &set.tokens {
            None => "development mode (no tokens)".to_owned(),
            Some(t) => format!("{} tokens", t.len()),
        };
        let operator = if set.operator.is_some() {
            "an operator credential"
        } else {
            "no operator credential"
        };
        format!("{tokens}, {operator}")
    }

    /// Whether a tokens file is in use (false: development mode).
    pub fn has_tokens(&self) -> bool {
        self.current().tokens.is_some()
    }

    /// The caller of a tenant service, by its bearer token.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Tenant, Status> {
        let set = self.current();
        let Some(tokens) = &set.tokens else {
            return Ok(Tenant::dev());
        };
        let token = bearer(metadata)?;
        tokens
            .tenant(token)
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// Admits the operator: its token, or anyone in development mode when no operator
    /// credential is set (every caller is an admin of everything there anyway).
    pub fn authenticate_operator(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let set = self.current();
        match (&set.operator, &set.tokens) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(Status::permission_denied(
                "this server has no operator credential (start it with --operator-token-file)",
            )),
            (Some(operator), _) => {
                let presented = tokens::digest(bearer(metadata)?);
                if bool::from(presented.ct_eq(operator)) {
                    Ok(())
                } else {
                    Err(Status::unauthenticated(
                        "not the operator token (tenant tokens cannot use the Operator service)",
                    ))
                }
            }
        }
    }

    /// `tenant`'s quotas from the tokens file (none in development mode).
    pub fn quotas(&self, tenant: &str) -> crate::quota::Quotas {
        let set = self.current();
        set.tokens
            .as_ref()
            .map(|t| t.quotas(tenant))
            .unwrap_or_default()
    }

    /// History GC's windows: `server` (`--history-retention`) for every tenant, shortened
    /// by `default_cap` (`--tenant-max-history-retention`) and by each tenant's own
    /// `max_history_retention`.
    pub fn retention(
        &self,
        server: std::time::Duration,
        default_cap: Option<std::time::Duration>,
    ) -> crate::store::Retention {
        let default = default_cap.map_or(server, |c| c.min(server));
        let set = self.current();
        let capped = set
            .tokens
            .iter()
            .flat_map(|t| t.all_quotas())
            .filter_map(|(tenant, q)| {
                q.max_history_retention
                    .map(|cap| (tenant.to_owned(), cap.min(server)))
            })
            .collect();
        crate::store::Retention { default, capped }
    }

    /// Whether `tenant`'s credential still grants what it did when it authenticated.
    pub fn still_grants(&self, tenant: &Tenant) -> bool {
        let set = self.current();
        match &set.tokens {
            None => tenant.credential.is_none(),
            Some(tokens) => tokens.still_grants(tenant),
        }
    }

    /// Completes once `tenant`'s credential no longer grants what it did (revoked or
    /// changed by a reload); never in development mode or for fixed credentials.
    pub async fn revoked(&self, tenant: &Tenant) {
        let mut changes = self.inner.generation.subscribe();
        loop {
            if !self.still_grants(tenant) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Request;
    use tonic::service::Interceptor as _;

    use super::super::{Authenticator, OperatorAuthenticator, Role, tenant_of};
    use super::*;

    fn request(header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = header.and_then(|h| h.parse().ok()) {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    fn call(creds: &Credentials, header: Option<&str>) -> Result<Tenant, Status> {
        let request = Authenticator::new(creds.clone()).call(request(header))?;
        tenant_of(&request, Role::Read, "test")
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn interceptor_sets_tenant_and_roles_gate_calls() {
        let map = TokenMap::parse(
            "[[token]]\ntoken = \"a\"\ntenant = \"acme\"\nadmin = true\n\
             [[token]]\ntoken = \"r\"\ntenant = \"beta\"\nrole = \"read\"\n",
        )
        .unwrap_or_default();
        let creds = Credentials::fixed(Some(map));
        assert_eq!(
            call(&creds, Some("bearer  a ")).map(|t| t.name).ok(),
            Some("acme".into())
        );
        for header in [None, Some("Bearer nope"), Some("Basic a"), Some("Bearer")] {
            let code = call(&creds, header).err().map(|s| s.code());
            assert_eq!(code, Some(tonic::Code::Unauthenticated), "{header:?}");
        }
        let reader = call(&creds, Some("Bearer r")).unwrap_or_else(|_| Tenant::dev());
        assert_eq!(reader.role, Role::Read);
        let denied = reader.require(Role::Write, "Commit").err();
        assert_eq!(
            denied.as_ref().map(Status::code),
            Some(tonic::Code::PermissionDenied)
        );
        assert!(denied.is_some_and(|s| s.message().contains("needs the write role")));
    }

    #[test]
    fn dev_mode_is_default_admin() {
        let creds = Credentials::default();
        let t = call(&creds, Some("Bearer whatever")).ok();
        assert_eq!(t, Some(Tenant::dev()));
        assert!(call(&creds, None).is_ok());
        assert!(
            OperatorAuthenticator::new(creds)
                .call(request(None))
                .is_ok()
        );
    }

    #[tokio::test]
    async fn reload_revokes_and_keeps_what_works_on_a_bad_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let both = "[[token]]\ntoken = \"a\"\ntenant = \"acme\"\n[[token]]\ntoken = \"b\"\ntenant = \"beta\"\n";
        let tokens = write(dir.path(), "t.toml", both);
        let operator = write(dir.path(), "op", "opsecret\n");
        let creds = Credentials::from_files(Some(&tokens), Some(&operator)).expect("load");
        let a = call(&creds, Some("Bearer a")).expect("a");
        let b = call(&creds, Some("Bearer b")).expect("b");
        let op = |header| {
            OperatorAuthenticator::new(creds.clone())
                .call(request(header))
                .map(|_| ())
        };
        assert!(op(Some("Bearer opsecret")).is_ok());
        assert!(
            op(Some("Bearer a")).is_err(),
            "a tenant token is not the operator's"
        );

        // A broken file changes nothing.
        write(dir.path(), "t.toml", "[[token]\n");
        assert!(creds.reload().is_err());
        assert!(call(&creds, Some("Bearer a")).is_ok());

        // Revoke a: its next call fails, its stream's wait ends; b is untouched.
        let waiting = tokio::spawn({
            let creds = creds.clone();
            async move { creds.revoked(&a).await }
        });
        write(
            dir.path(),
            "t.toml",
            "[[token]]\ntoken = \"b\"\ntenant = \"beta\"\n",
        );
        assert!(creds.reload().is_ok());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("revoked in time")
            .expect("task");
        assert!(call(&creds, Some("Bearer a")).is_err());
        assert!(creds.still_grants(&b));

        // The operator token may not double as a tenant's.
        write(
            dir.path(),
            "t.toml",
            "[[token]]\ntoken = \"opsecret\"\ntenant = \"x\"\n",
        );
        let err = creds
            .reload()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("must be separate"), "{err}");
    }
}
