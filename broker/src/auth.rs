//! Authentication and authorisation: a password file (one `user:hash` line each, the hash an
//! argon2id PHC string, in the spirit of `mosquitto_passwd`) and an ACL file in Mosquitto's
//! syntax:
//!
//! ```text
//! # rules before any `user` line apply to clients without a username
//! topic read public/#
//! user alice
//! topic readwrite sensors/#
//! topic deny sensors/secret/#
//! # patterns apply to every client; %u is its username, %c its client id
//! pattern write devices/%c/status
//! pattern read users/%u/#
//! ```
//!
//! With an ACL file a client may do only what a rule allows, and a `deny` rule wins over any
//! allow. Without one every client may publish and subscribe to everything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::codec::topic;

/// Why an auth file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A line is not understood.
    #[error("{path} line {line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// Hashing failed (should not happen).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Usernames and their password hashes.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, String>,
}

impl PasswordFile {
    /// Reads a password file. Blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io { path: path.into(), source })?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |reason: &str| AuthError::Syntax { path: path.into(), line: i + 1, reason: reason.into() };
            let (user, hash) = line.split_once(':').ok_or_else(|| syntax("expected `user:hash`"))?;
            PasswordHash::new(hash)
                .map_err(|_| syntax("the hash is not a PHC string; make it with `promptmq passwd`"))?;
            users.insert(user.to_string(), hash.to_string());
        }
        Ok(PasswordFile { users })
    }

    /// Whether `password` is `user`'s. Deliberately slow (argon2): call off the async runtime.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(hash) = self.users.get(user) else {
            // Spend the same time for an unknown user, so timing does not tell names apart.
            let _ = Argon2::default().hash_password(password, &SaltString::generate(&mut OsRng));
            return false;
        };
        match PasswordHash::new(hash) {
            Ok(h) => Argon2::default().verify_password(password, &h).is_ok(),
            Err(_) => false,
        }
    }

    /// Sets (or with `None`, removes) a user's password in the file at `path`, creating it
    /// if missing; other lines are kept as they are. The file is replaced atomically.
    pub fn update(path: &Path, user: &str, password: Option<&[u8]>) -> Result<(), AuthError> {
        if user.is_empty() || user.contains(':') || user.contains(char::is_whitespace) {
            return Err(AuthError::Syntax {
                path: path.into(),
                line: 0,
                reason: format!("username {user:?} must be non-empty, without ':' or spaces"),
            });
        }
        let old = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(AuthError::Io { path: path.into(), source }),
        };
        let mut out = String::with_capacity(old.len() + 128);
        for line in old.lines() {
            if line.split_once(':').is_some_and(|(u, _)| u.trim() == user) {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        if let Some(pw) = password {
            let salt = SaltString::generate(&mut OsRng);
            let hash = Argon2::default().hash_password(pw, &salt).map_err(|e| AuthError::Hash(e.to_string()))?;
            out.push_str(&format!("{user}:{hash}\n"));
        }
        let tmp = path.with_extension("tmp");
        let io = |source| AuthError::Io { path: path.into(), source };
        std::fs::write(&tmp, out).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The authentication and authorisation settings in force (replaced as a whole on reload).
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Whether clients without a username may connect.
    pub allow_anonymous: bool,
    /// Users and password hashes, if a password file is configured.
    pub passwords: Option<PasswordFile>,
    /// The ACL, if an ACL file is configured.
    pub acl: Option<Acl>,
}

impl AuthConfig {
    /// Reads the configured files.
    pub fn load(
        allow_anonymous: bool,
        password_file: Option<&Path>,
        acl_file: Option<&Path>,
    ) -> Result<AuthConfig, AuthError> {
        Ok(AuthConfig {
            allow_anonymous,
            passwords: password_file.map(PasswordFile::load).transpose()?,
            acl: acl_file.map(Acl::load).transpose()?,
        })
    }
}

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, Clone)]
struct Rule {
    access: Access,
    /// Topic filter; in patterns, `%u` and `%c` are substituted per client.
    filter: String,
}

/// An ACL file.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    /// Reads an ACL file (Mosquitto syntax; see the module docs).
    pub fn load(path: &Path) -> Result<Acl, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io { path: path.into(), source })?;
        Acl::parse(&text).map_err(|(line, reason)| AuthError::Syntax { path: path.into(), line, reason })
    }

    /// Parses ACL text: the ACL, or (line number, what is wrong).
    pub(crate) fn parse(text: &str) -> Result<Acl, (usize, String)> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match word {
                "user" if !rest.is_empty() => user = Some(rest.to_string()),
                "topic" | "pattern" => {
                    let (access, filter) = match rest.split_once(char::is_whitespace) {
                        Some((a @ ("read" | "write" | "readwrite" | "deny"), f)) => (a, f.trim()),
                        _ => ("readwrite", rest),
                    };
                    let access = match access {
                        "read" => Access::Read,
                        "write" => Access::Write,
                        "deny" => Access::Deny,
                        _ => Access::ReadWrite,
                    };
                    let probe = filter.replace("%u", "u").replace("%c", "c");
                    if filter.is_empty() || topic::validate_filter(&probe).is_err() {
                        return Err((i + 1, format!("{filter:?} is not a topic filter")));
                    }
                    let rule = Rule { access, filter: filter.to_string() };
                    match (word, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                _ => {
                    return Err((
                        i + 1,
                        format!("unknown line {line:?}; expected `user NAME`, `topic [read|write|readwrite|deny] FILTER` or `pattern ...`"),
                    ))
                }
            }
        }
        Ok(acl)
    }

    /// The rules that apply to one client, with `%u` / `%c` substituted.
    pub fn for_client(&self, username: Option<&str>, client_id: &str) -> ClientAcl {
        let own = match username {
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or(&[]),
            None => &self.anonymous,
        };
        let mut rules: Vec<Rule> = own.to_vec();
        for p in &self.patterns {
            // A pattern naming %u does not apply to a client without a username.
            if p.filter.contains("%u") && username.is_none() {
                continue;
            }
            // A name with wildcard characters must not widen the rule: such a client gets
            // nothing from patterns naming it.
            let wild = |s: &str| s.contains(['+', '#']);
            if (p.filter.contains("%c") && wild(client_id)) || (p.filter.contains("%u") && username.is_some_and(wild)) {
                continue;
            }
            let filter = p.filter.replace("%u", username.unwrap_or("")).replace("%c", client_id);
            if topic::validate_filter(&filter).is_ok() {
                rules.push(Rule { access: p.access, filter });
            }
        }
        let deny_reads = rules.iter().any(|r| r.access == Access::Deny);
        ClientAcl { rules, deny_reads }
    }
}

/// The ACL rules of one connected client.
#[derive(Debug, Clone)]
pub struct ClientAcl {
    rules: Vec<Rule>,
    deny_reads: bool,
}

impl ClientAcl {
    /// Whether the client may publish to `name`.
    pub fn may_publish(&self, name: &str) -> bool {
        let hits = self.rules.iter().filter(|r| topic::matches(&r.filter, name));
        let mut allowed = false;
        for r in hits {
            match r.access {
                Access::Deny => return false,
                Access::Write | Access::ReadWrite => allowed = true,
                Access::Read => {}
            }
        }
        allowed
    }

    /// Whether the client may subscribe to `filter`: a read rule must cover all of it.
    /// (Deny rules inside it are applied per message, see [`ClientAcl::may_receive`].)
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let filter = match topic::parse_shared(filter) {
            Some(Ok(s)) => s.filter,
            _ => filter,
        };
        if self.rules.iter().any(|r| r.access == Access::Deny && covers(&r.filter, filter)) {
            return false;
        }
        self.rules.iter().any(|r| matches!(r.access, Access::Read | Access::ReadWrite) && covers(&r.filter, filter))
    }

    /// Whether a message on `name` may be delivered to the client (deny rules).
    pub fn may_receive(&self, name: &str) -> bool {
        !self.deny_reads || !self.rules.iter().any(|r| r.access == Access::Deny && topic::matches(&r.filter, name))
    }
}

/// Whether every topic `filter` matches is matched by `rule`.
fn covers(rule: &str, filter: &str) -> bool {
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACL: &str = "
# anonymous
topic read public/#
user alice
topic readwrite sensors/#
topic deny sensors/secret/#
user bob
topic write sensors/bob
pattern write devices/%c/status
pattern read users/%u/#
";

    #[test]
    fn rules_per_user_patterns_and_deny() {
        let acl = Acl::parse(ACL).unwrap();
        let alice = acl.for_client(Some("alice"), "a1");
        assert!(alice.may_publish("sensors/t"));
        assert!(!alice.may_publish("sensors/secret/x"), "deny wins");
        assert!(!alice.may_publish("public/x"), "anonymous rules are not alice's");
        assert!(alice.may_publish("devices/a1/status"), "pattern with %c");
        assert!(!alice.may_publish("devices/b1/status"));
        assert!(alice.may_subscribe("sensors/+/temp"));
        assert!(alice.may_subscribe("users/alice/inbox"));
        assert!(!alice.may_subscribe("users/bob/#"));
        assert!(!alice.may_subscribe("#"), "not covered by a read rule");
        assert!(!alice.may_subscribe("sensors/secret/#"));
        assert!(alice.may_subscribe("sensors/#"), "allowed; the denied part is filtered per message");
        assert!(!alice.may_receive("sensors/secret/k") && alice.may_receive("sensors/t"));
        let anon = acl.for_client(None, "x");
        assert!(anon.may_subscribe("public/news") && !anon.may_publish("public/news"));
        assert!(!anon.may_subscribe("users/x/#"), "%u patterns skip clients without a username");
        let bob = acl.for_client(Some("bob"), "b");
        assert!(bob.may_publish("sensors/bob") && !bob.may_subscribe("sensors/bob"));
        let sneaky = acl.for_client(Some("alice"), "+");
        assert!(!sneaky.may_publish("devices/x/status"), "a wildcard client id does not widen a pattern");
        assert!(alice.may_subscribe("$share/g/sensors/a"), "shared subscriptions are checked on their filter");
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(Acl::parse("topic read a/#/b").unwrap_err().0, 1);
        assert!(Acl::parse("user\n").unwrap_err().1.contains("unknown line"));
        assert!(Acl::parse("\n\nallow all").unwrap_err().0 == 3);
    }

    #[test]
    fn covers_is_filter_inclusion() {
        assert!(covers("a/#", "a/b/c") && covers("a/#", "a/+") && covers("a/#", "a"));
        assert!(covers("a/+", "a/b") && covers("a/+", "a/+") && !covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+") && !covers("a", "a/b") && covers("#", "#"));
    }

    #[test]
    fn password_file_update_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        PasswordFile::update(&p, "alice", Some(b"s3cret")).unwrap();
        PasswordFile::update(&p, "bob", Some(b"hunter2")).unwrap();
        PasswordFile::update(&p, "alice", Some(b"new")).unwrap();
        let f = PasswordFile::load(&p).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.verify("alice", b"new") && !f.verify("alice", b"s3cret"));
        assert!(f.verify("bob", b"hunter2") && !f.verify("carol", b"hunter2"));
        PasswordFile::update(&p, "bob", None).unwrap();
        assert!(!PasswordFile::load(&p).unwrap().verify("bob", b"hunter2"));
        assert!(PasswordFile::update(&p, "a:b", Some(b"x")).is_err());
        std::fs::write(&p, "alice:plaintext\n").unwrap();
        let e = PasswordFile::load(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("promptmq passwd"), "{e}");
    }
}
