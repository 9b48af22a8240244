//! The tokens file: bearer tokens, or their SHA-256 hashes, to tenants and roles.
//!
//! ```toml
//! [[token]]
//! token = "secret-a"          # or "sha256:<64 hex digits>", the hash of the token
//! tenant = "acme"
//! role = "write"              # read | write | admin; optional
//! ```
//!
//! An entry without a role keeps the meaning it had before roles: `write`, or `admin`
//! where it says `admin = true`. The server keeps only digests: a plaintext token is
//! hashed as the file is read. A call's token is hashed, looked up by its digest, and
//! the digest compared again in constant time; the lookup's timing can tell at most
//! something about a digest, which tells nothing about any token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{Digest, Role, Tenant};
use crate::quota::{Quotas, TenantSection};

/// Longest tenant name in bytes.
pub const MAX_TENANT_BYTES: usize = 64;
/// The prefix of a hashed token in the tokens file.
pub const SHA256_PREFIX: &str = "sha256:";

/// A tokens file that cannot be used; the server refuses to start (or, on a reload,
/// keeps the credentials it has).
#[derive(Debug, thiserror::Error)]
#[error("tokens file {}: {problem}", path.display())]
pub struct TokensError {
    pub path: PathBuf,
    pub problem: String,
}

/// What one token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    tenant: String,
    role: Role,
}

/// Bearer tokens (by digest) and the tenants and roles they stand for, and the
/// tenants' quotas (`[[tenant]]` sections).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenMap {
    tokens: HashMap<Digest, Entry>,
    quotas: HashMap<String, Quotas>,
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
    #[serde(default)]
    tenant: Vec<TenantSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    tenant: String,
    #[serde(default)]
    admin: Option<bool>,
    #[serde(default)]
    role: Option<Role>,
}

impl TokenEntry {
    /// The role this entry gives (see the module comment).
    fn role(&self) -> Result<Role, String> {
        match (self.role, self.admin) {
            (Some(role), None) | (Some(role @ Role::Admin), Some(true)) => Ok(role),
            (Some(role), Some(true)) => Err(format!(
                "role = \"{}\" and admin = true disagree; keep only role",
                role.as_str()
            )),
            (Some(Role::Admin), Some(false)) => {
                Err("role = \"admin\" and admin = false disagree; keep only role".into())
            }
            (Some(role), Some(false)) => Ok(role),
            (None, Some(true)) => Ok(Role::Admin),
            (None, _) => Ok(Role::Write),
        }
    }
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

/// The SHA-256 digest of `token`.
pub fn digest(token: &str) -> Digest {
    Sha256::digest(token.as_bytes()).into()
}

/// The digest a tokens-file value stands for: `sha256:<hex>` is one already, anything
/// else is a plaintext token.
pub fn stored_digest(value: &str) -> Result<Digest, String> {
    let Some(hex) = value.strip_prefix(SHA256_PREFIX) else {
        if value.trim().is_empty() {
            return Err("empty token".into());
        }
        return Ok(digest(value.trim()));
    };
    let hex = hex.trim();
    let bytes = hex.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!(
            "{SHA256_PREFIX} must be followed by 64 hex digits (the SHA-256 of the token, \
             e.g. from `printf %s TOKEN | sha256sum`), not {} characters",
            hex.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| "not hex".to_owned())?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| "not hex".to_owned())?;
    }
    Ok(out)
}

/// Reads a file, naming it in the error.
pub(super) fn read(path: &Path) -> Result<String, TokensError> {
    std::fs::read_to_string(path).map_err(|e| TokensError {
        path: path.to_owned(),
        problem: format!("cannot read it: {e}"),
    })
}

impl TokenMap {
    /// Reads and checks a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        Self::parse(&read(path)?).map_err(|problem| TokensError {
            path: path.to_owned(),
            problem,
        })
    }

    /// Parses the TOML text of a tokens file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile =
            toml::from_str(text).map_err(|e| format!("bad TOML: {}", toml_error(text, &e)))?;
        let mut map = TokenMap::default();
        for (i, entry) in file.token.into_iter().enumerate() {
            let n = i + 1;
            let role = entry.role().map_err(|p| format!("[[token]] #{n}: {p}"))?;
            map.insert(&entry.token, &entry.tenant, role)
                .map_err(|p| format!("[[token]] #{n}: {p}"))?;
        }
        for (i, section) in file.tenant.iter().enumerate() {
            let n = i + 1;
            check_tenant_name(&section.name)
                .and_then(|()| section.check())
                .map_err(|p| format!("[[tenant]] #{n}: {p}"))?;
            if map
                .quotas
                .insert(section.name.clone(), section.quotas())
                .is_some()
            {
                return Err(format!(
                    "[[tenant]] #{n}: tenant {:?} has a section already",
                    section.name
                ));
            }
        }
        Ok(map)
    }

    /// Adds a token (plaintext, or `sha256:<hex>`); refuses an empty or duplicate token
    /// and a bad tenant name.
    pub fn insert(&mut self, token: &str, tenant: &str, role: Role) -> Result<(), String> {
        let digest = stored_digest(token)?;
        check_tenant_name(tenant)?;
        if self.tokens.contains_key(&digest) {
            return Err(format!("duplicate token (again for tenant {tenant:?})"));
        }
        let entry = Entry {
            tenant: tenant.to_owned(),
            role,
        };
        self.tokens.insert(digest, entry);
        Ok(())
    }

    /// The tenant the bearer token `token` stands for.
    pub fn tenant(&self, token: &str) -> Option<Tenant> {
        let presented = digest(token);
        let (stored, entry) = self.tokens.get_key_value(&presented)?;
        if !bool::from(stored.ct_eq(&presented)) {
            return None;
        }
        Some(Tenant {
            name: entry.tenant.clone(),
            role: entry.role,
            credential: Some(presented),
        })
    }

    /// Whether the token with digest `credential` still stands for `tenant` with the
    /// same role.
    pub fn still_grants(&self, tenant: &Tenant) -> bool {
        let Some(credential) = &tenant.credential else {
            return true;
        };
        self.tokens
            .get(credential)
            .is_some_and(|e| e.tenant == tenant.name && e.role == tenant.role)
    }

    /// `tenant`'s quotas from its `[[tenant]]` section (none set: all `None`).
    pub fn quotas(&self, tenant: &str) -> Quotas {
        self.quotas.get(tenant).copied().unwrap_or_default()
    }

    /// Every tenant with a `[[tenant]]` section, and its quotas.
    pub fn all_quotas(&self) -> impl Iterator<Item = (&str, &Quotas)> {
        self.quotas.iter().map(|(t, q)| (t.as_str(), q))
    }

    /// Sets `tenant`'s quotas (as a `[[tenant]]` section does).
    pub fn set_quotas(&mut self, tenant: &str, quotas: Quotas) {
        self.quotas.insert(tenant.to_owned(), quotas);
    }

    /// Whether `digest` is one of these tokens.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.tokens.contains_key(digest)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> TokenMap {
        let text = "[[token]]\ntoken = \"a\"\ntenant = \"acme\"\nadmin = true\n\n[[token]]\ntoken = \"b\"\ntenant = \"beta\"\n";
        TokenMap::parse(text).unwrap_or_default()
    }

    fn who(m: &TokenMap, token: &str) -> Option<(String, Role)> {
        m.tenant(token).map(|t| (t.name, t.role))
    }

    #[test]
    fn parses_tokens() {
        let m = map();
        assert_eq!(m.len(), 2);
        assert_eq!(who(&m, "a"), Some(("acme".into(), Role::Admin)));
        assert_eq!(who(&m, "b"), Some(("beta".into(), Role::Write)));
        assert_eq!(who(&m, "c"), None);
        assert!(format!("{m:?}").contains("2 tokens") && !format!("{m:?}").contains("acme"));
    }

    #[test]
    fn hashed_tokens_and_roles() {
        // printf %s s3cret | sha256sum
        let hash = "sha256:9ad64c5e7e5c1e6d6e1a5c5d1f3e0bba8a4e2e5b0a2c9b6a3f1e9d8c7b6a5f4e";
        let real = format!("sha256:{}", hex(&digest("s3cret")));
        let text = format!(
            "[[token]]\ntoken = \"{real}\"\ntenant = \"acme\"\nrole = \"read\"\n\
             [[token]]\ntoken = \"{hash}\"\ntenant = \"beta\"\nrole = \"admin\"\nadmin = true\n\
             [[token]]\ntoken = \"w\"\ntenant = \"beta\"\nrole = \"write\"\nadmin = false\n"
        );
        let m = TokenMap::parse(&text).unwrap_or_default();
        assert_eq!(m.len(), 3);
        assert_eq!(who(&m, "s3cret"), Some(("acme".into(), Role::Read)));
        // The hash itself is not a token.
        assert_eq!(who(&m, &real), None);
        assert_eq!(who(&m, "w"), Some(("beta".into(), Role::Write)));
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
    }

    #[test]
    fn tenant_sections_set_quotas() {
        let text = "[[token]]\ntoken = \"a\"\ntenant = \"acme\"\n\
                    [[tenant]]\nname = \"acme\"\nmax_databases = 3\nmax_stored_bytes = \"1GiB\"\n\
                    max_database_bytes = 65536\nmax_commits_per_second = 7\n";
        let m = TokenMap::parse(text).unwrap_or_default();
        let q = m.quotas("acme");
        assert_eq!(q.max_databases, Some(3));
        assert_eq!(q.max_stored_bytes, Some(1 << 30));
        assert_eq!(q.max_database_bytes, Some(65536));
        assert_eq!(q.max_commits_per_second, Some(7));
        assert_eq!(q.max_watchers, None);
        assert_eq!(m.quotas("other"), Quotas::default());
        for (bad, want) in [
            (
                "[[tenant]]\nname = \"a\"\nmax_databses = 1\n",
                "unknown field",
            ),
            (
                "[[tenant]]\nname = \"a\"\nmax_stored_bytes = \"lots\"\n",
                "bad TOML",
            ),
            ("[[tenant]]\nname = \"a b\"\n", "bad tenant name"),
            (
                "[[tenant]]\nname = \"a\"\nmax_commits_per_second = 0\n",
                "at least 1",
            ),
            (
                "[[tenant]]\nname = \"a\"\n[[tenant]]\nname = \"a\"\n",
                "has a section already",
            ),
        ] {
            let err = TokenMap::parse(bad).err().unwrap_or_default();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
    }

    fn hex(d: &Digest) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
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
            (
                "[[token]]\ntoken = \"sha256:abc\"\ntenant = \"a\"\n",
                "64 hex digits",
            ),
            (
                "[[token]]\ntoken = \"x\"\ntenant = \"a\"\nrole = \"root\"\n",
                "bad TOML",
            ),
            (
                "[[token]]\ntoken = \"x\"\ntenant = \"a\"\nrole = \"read\"\nadmin = true\n",
                "disagree",
            ),
            (
                "[[token]]\ntoken = \"sha256:9ad64c5e7e5c1e6d6e1a5c5d1f3e0bba8a4e2e5b0a2c9b6a3f1e9d8c7b6a5f4e\"\ntenant = \"a\"\n[[token]]\ntoken = \"SHA256:x\"\ntenant = \"b\"\n[[token]]\ntoken = \"sha256:9AD64C5E7E5C1E6D6E1A5C5D1F3E0BBA8A4E2E5B0A2C9B6A3F1E9D8C7B6A5F4E\"\ntenant = \"c\"\n",
                "duplicate",
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
}
