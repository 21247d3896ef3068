//! Authentication: which user a request's bearer token stands for. Tokens
//! are the admin's and the nodes' (made on first start) and those of a
//! static token file in kube-apiserver's `--token-auth-file` format.

use std::path::Path;
use std::sync::Arc;

use axum::http::{header, HeaderMap};

/// Kubernetes' group of superusers: never checked against RBAC, so a
/// deleted or broken binding cannot lock the admin out.
pub const MASTERS: &str = "system:masters";
/// Every authenticated user is in it.
pub const AUTHENTICATED: &str = "system:authenticated";
/// What nodes authenticate as.
pub const NODES: &str = "system:nodes";

/// Who a request comes from, as `kubectl auth whoami` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    /// Includes `system:authenticated`.
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn new(name: impl Into<String>, uid: impl Into<String>, groups: Vec<String>) -> UserInfo {
        let mut groups = groups;
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        UserInfo {
            name: name.into(),
            uid: uid.into(),
            groups,
        }
    }

    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading the token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {why}")]
    Line {
        path: String,
        line: usize,
        why: String,
    },
}

/// The tokens the server accepts.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<(String, Arc<UserInfo>)>,
}

impl Tokens {
    /// The two built-in identities: the admin (a superuser) and the nodes.
    pub fn new(admin_token: &str, node_token: &str) -> Tokens {
        Tokens {
            entries: vec![
                (
                    admin_token.to_string(),
                    Arc::new(UserInfo::new("admin", "admin", vec![MASTERS.into()])),
                ),
                (
                    node_token.to_string(),
                    Arc::new(UserInfo::new("node", "node", vec![NODES.into()])),
                ),
            ],
        }
    }

    /// Adds the users of a static token file: one `token,user,uid,"group1,group2"`
    /// line each (groups optional), as kube-apiserver reads `--token-auth-file`.
    pub fn add_file(&mut self, path: &Path) -> Result<usize, TokenFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let users = parse_token_file(&text).map_err(|(line, why)| TokenFileError::Line {
            path: shown,
            line,
            why,
        })?;
        let n = users.len();
        for (token, user) in users {
            if self.entries.iter().any(|(t, _)| *t == token) {
                return Err(TokenFileError::Line {
                    path: path.display().to_string(),
                    line: 0,
                    why: format!("the token of user {:?} is already taken", user.name),
                });
            }
            self.entries.push((token, Arc::new(user)));
        }
        Ok(n)
    }

    /// Who a request's bearer token says it is.
    pub fn lookup(&self, headers: &HeaderMap) -> Option<Arc<UserInfo>> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let presented = value.strip_prefix("Bearer ")?.trim();
        self.entries
            .iter()
            .find(|(t, _)| constant_time_eq(t.as_bytes(), presented.as_bytes()))
            .map(|(_, who)| who.clone())
    }
}

/// Token comparison whose time does not depend on where bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a token file; errors carry the 1-based line number.
fn parse_token_file(text: &str) -> Result<Vec<(String, UserInfo)>, (usize, String)> {
    let mut out: Vec<(String, UserInfo)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = csv_fields(line).map_err(|why| (n, why))?;
        if fields.len() < 3 {
            return Err((
                n,
                format!(
                    "expected token,user,uid[,\"groups\"], found {} field(s)",
                    fields.len()
                ),
            ));
        }
        let (token, name, uid) = (&fields[0], &fields[1], &fields[2]);
        if token.is_empty() || name.is_empty() {
            return Err((n, "the token and the user name must not be empty".into()));
        }
        if out.iter().any(|(t, _)| t == token) {
            return Err((n, format!("the token of user {name:?} is repeated")));
        }
        let groups = fields
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            token.clone(),
            UserInfo::new(name.as_str(), uid.as_str(), groups),
        ));
    }
    Ok(out)
}

/// One CSV line's fields: commas separate, double quotes enclose a field
/// with commas in it, and `""` inside quotes is one quote.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if cur.is_empty() => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', true) => {
                quoted = false;
                if !matches!(chars.peek(), None | Some(',')) {
                    return Err("text after a closing quote".into());
                }
            }
            (',', false) => fields.push(std::mem::take(&mut cur).trim().to_string()),
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    fields.push(cur.trim().to_string());
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_read_as_kube_apiserver_reads_them() {
        let users = parse_token_file("# ops team\nt1,jane,u-1\n\nt2,bob,u-2,\"ops,dev\"\n")
            .expect("parses");
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].1.name, "jane");
        assert_eq!(users[0].1.groups, vec![AUTHENTICATED]);
        assert_eq!(users[1].1.groups, vec!["ops", "dev", AUTHENTICATED]);
        assert_eq!(parse_token_file("t1,jane\n").expect_err("too few").0, 1);
        assert_eq!(
            parse_token_file("ok,a,1\nt1,jane,1,\"ops\n")
                .expect_err("unclosed")
                .0,
            2
        );
        assert!(
            parse_token_file("t,a,1\nt,b,2\n").is_err(),
            "a repeated token"
        );
    }

    #[test]
    fn the_admin_is_a_master_and_nodes_are_not() {
        let tokens = Tokens::new("a", "n");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer a".parse().expect("header"));
        assert!(tokens.lookup(&h).expect("admin").is_master());
        h.insert(header::AUTHORIZATION, "Bearer n".parse().expect("header"));
        let node = tokens.lookup(&h).expect("node");
        assert!(!node.is_master() && node.in_group(NODES));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().expect("header"));
        assert!(tokens.lookup(&h).is_none());
    }
}
