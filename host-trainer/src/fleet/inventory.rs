//! Ansible inventories (INI and YAML) read as Ansible reads them, so `kestrel fleet deploy
//! --inventory FILE --limit PATTERN` reuses the inventory users already keep for their boards.
//!
//! Covered: groups, `:vars`, `:children`, host ranges, `name:port`, `all`/`ungrouped`, variable
//! precedence (depth, then `ansible_group_priority`, then name; host variables last), `--limit`
//! host patterns and the ssh connection variables. Not covered: Jinja templating of values,
//! Python-literal evaluation of INI values (they stay text, quotes removed), `group_vars/` and
//! `host_vars/` directories, inventory plugins and scripts, pattern subscripts (`web[0]`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_norway::Value;

/// OpenSSH client flags that take a value (`-o Key=Value`, `-F FILE`, ...).
const SSH_VALUE_FLAGS: &str = "bcDEeFIiJLlmOopQRSWw";
/// Most hosts one host range may expand to: a guard against typos like `pi[1:1000000]`.
const MAX_RANGE_HOSTS: usize = 10_000;

/// Variables as `(name, value)` pairs in the order they were given.
type Vars = [(String, String)];

/// An inventory read from a file.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The file it was read from; every error names it.
    pub path: PathBuf,
    /// Every host, in the order the file first mentions it.
    pub hosts: Vec<Host>,
    /// Each group's name and the indices of all its hosts (descendants' included), ascending.
    groups: Vec<(String, Vec<usize>)>,
}

/// One host with its variables resolved as Ansible resolves them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// The inventory name (Ansible's `inventory_hostname`).
    pub name: String,
    /// Every group the host is in, ancestors and `all` included, in variable precedence order:
    /// `all` first, the group whose variables win last.
    pub groups: Vec<String>,
    /// Group and host variables merged by Ansible's precedence rules, as text: YAML scalars in
    /// their usual form (`2222`, `true`), null as "", lists and mappings as their YAML text (so
    /// structured variables Kestrel does not use don't make an inventory unreadable).
    pub vars: BTreeMap<String, String>,
    /// The inventory file the host was read from, named in errors about its variables.
    pub inventory: PathBuf,
}

/// Why an inventory could not be read, or a pattern or host variable could not be used. Every
/// message names the file and says what is expected.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The inventory file could not be read.
    #[error("cannot read inventory {}: {source}; pass an existing Ansible inventory (INI or YAML) with --inventory", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line (1-based) of an INI inventory is not valid.
    #[error("{}:{line}: {message}", path.display())]
    Ini {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The YAML is not an inventory, or the groups form a `children` cycle.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// A `--limit` host pattern (or a part of it) is invalid or selects nothing.
    #[error("{}: host pattern {pattern:?}: {message}", path.display())]
    Pattern {
        path: PathBuf,
        pattern: String,
        message: String,
    },
    /// A host's connection variable cannot be turned into ssh arguments.
    #[error("{}: host {host}: variable {var}: {message}", path.display())]
    HostVar {
        path: PathBuf,
        host: String,
        var: String,
        message: String,
    },
}

impl Inventory {
    /// Reads `path`: YAML if its extension is `.yml`/`.yaml` or its text is a YAML mapping of
    /// group mappings (as JSON inventories are too), INI otherwise.
    pub fn read(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.into(),
            source,
        })?;
        let ext = path.extension().unwrap_or_default().to_ascii_lowercase();
        if ext == "yml" || ext == "yaml" || looks_like_yaml_inventory(&text) {
            Inventory::parse_yaml(&text, path)
        } else {
            Inventory::parse_ini(&text, path)
        }
    }

    /// Parses an INI inventory (`[group]`, `[group:vars]`, `[group:children]`); `path` is used
    /// in errors and as `Inventory::path`.
    pub fn parse_ini(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
        let mut b = Builder::new(path);
        let (mut group, mut state) = (1, "hosts"); // lines before any section: `ungrouped`
        let (mut declared, mut var_sections) = (HashSet::from([0, 1]), Vec::new());
        for (i, line) in text.lines().map(str::trim).enumerate() {
            let err = |message| InventoryError::Ini {
                path: path.into(),
                line: i + 1,
                message,
            };
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            } else if let Some((name, kind)) = parse_section(line) {
                (group, state) = (b.group(name), kind.unwrap_or("hosts"));
                match state {
                    "vars" => var_sections.push((group, i + 1)),
                    "hosts" | "children" => _ = declared.insert(group),
                    _ => {
                        let fix = format!("use [{name}], [{name}:vars] or [{name}:children]");
                        return Err(err(format!("unknown section type [{name}:{state}]; {fix}")));
                    }
                }
            } else if line.starts_with('[') && line.ends_with(']') {
                let fix = "use [group], [group:vars] or [group:children] without spaces";
                return Err(err(format!("invalid section header {line}; {fix}")));
            } else if state == "hosts" {
                let (pattern, vars) = parse_host_line(line).map_err(err)?;
                b.add_hosts(&pattern, group, &vars).map_err(err)?;
            } else if state == "vars" {
                let Some((k, v)) = line.split_once('=') else {
                    return Err(err(format!(
                        "expected key=value in a :vars section, got {line:?}"
                    )));
                };
                b.set_group_var(group, k.trim(), unquote(v.trim()))
                    .map_err(err)?;
            } else {
                let Some(child) = parse_child_line(line) else {
                    return Err(err(format!(
                        "expected a group name in a :children section, got {line:?}"
                    )));
                };
                let child = b.group(child);
                declared.insert(child);
                b.add_child(group, child);
            }
        }
        if let Some(&(g, line)) = var_sections.iter().find(|(g, _)| !declared.contains(g)) {
            let name = &b.groups[g].name;
            let message = format!(
                "[{name}:vars] is for a group that is never defined; add a [{name}] section or list {name} under a [parent:children] section"
            );
            return Err(InventoryError::Ini {
                path: path.into(),
                line,
                message,
            });
        }
        b.finish()
    }

    /// Parses a YAML inventory: a mapping of group names (usually just `all`) to
    /// `{hosts: {NAME: {vars} | null}, vars: {...}, children: {GROUP: {...}}}`. Other keys in a
    /// group are an error (Ansible only warns), as are hosts given as a list.
    pub fn parse_yaml(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
        let err = |message| InventoryError::Invalid {
            path: path.into(),
            message,
        };
        let doc = serde_norway::from_str::<Value>(text);
        let mut doc = doc.map_err(|e| err(format!("not valid YAML: {e}")))?;
        doc.apply_merge()
            .map_err(|e| err(format!("bad YAML merge key: {e}")))?;
        let top = match doc {
            Value::Mapping(m) if !m.is_empty() && !m.contains_key("plugin") => m,
            _ => return Err(err("not a YAML inventory: expected a mapping of group names (usually `all:`) to hosts:, vars: and children: (inventory plugin configurations are not supported)".into())),
        };
        let mut b = Builder::new(path);
        for (name, data) in &top {
            yaml_group(&mut b, &value_text(name), data).map_err(err)?;
        }
        b.finish()
    }

    /// The hosts an Ansible host pattern (`--limit`) selects, in inventory order without
    /// duplicates; `None` selects all. Errors if a part matches no host or group, or if no host
    /// is left.
    pub fn select(&self, limit: Option<&str>) -> Result<Vec<&Host>, InventoryError> {
        let limit = limit.unwrap_or("all");
        let mut parts = split_patterns(limit);
        if parts.is_empty() {
            let message = "empty; name hosts or groups, e.g. 'shelf:!shelf-03'";
            return Err(self.pattern_err(limit, message));
        } else if parts.iter().all(|p| p.starts_with(['!', '&'])) {
            parts.insert(0, "all");
        }
        // As Ansible: the union of the plain parts, then the `&` parts, then the `!` parts.
        parts.sort_by_key(|p| ["&", "!"].iter().position(|op| p.starts_with(op)));
        let mut chosen = vec![false; self.hosts.len()];
        for part in parts {
            let hit = self.matching(part.trim_start_matches(['!', '&']))?;
            for (c, h) in chosen.iter_mut().zip(hit) {
                *c = match part.as_bytes()[0] {
                    b'&' => *c && h,
                    b'!' => *c && !h,
                    _ => *c || h,
                };
            }
        }
        let hosts = self.hosts.iter().zip(chosen).filter(|h| h.1);
        let hosts: Vec<&Host> = hosts.map(|h| h.0).collect();
        if hosts.is_empty() {
            return Err(self.pattern_err(limit, "selects no hosts once its & and ! parts apply"));
        }
        Ok(hosts)
    }

    /// Every group name: `all` and `ungrouped`, then the others in the order the file gives them.
    pub fn group_names(&self) -> Vec<&str> {
        self.groups.iter().map(|g| g.0.as_str()).collect()
    }

    /// Which hosts one pattern part (no `!`/`&`) matches, as Ansible's `_enumerate_matches`:
    /// hosts of the groups it names, and hosts by name if no group matched or the pattern is a
    /// glob or regex or has a '.'.
    fn matching(&self, pattern: &str) -> Result<Vec<bool>, InventoryError> {
        let matcher = pattern_regex(pattern).map_err(|m| self.pattern_err(pattern, &m))?;
        let mut hit = vec![false; self.hosts.len()];
        let mut found = false;
        for (_, hosts) in self.groups.iter().filter(|g| matcher.is_match(&g.0)) {
            found = true;
            hosts.iter().for_each(|&h| hit[h] = true);
        }
        if !found || pattern.starts_with('~') || pattern.contains(['.', '?', '*', '[']) {
            for (i, host) in self.hosts.iter().enumerate() {
                if matcher.is_match(&host.name) {
                    (hit[i], found) = (true, true);
                }
            }
        }
        if !found {
            let groups = self.group_names().join(", ");
            let message = format!("matches no host or group; the groups are: {groups}");
            return Err(self.pattern_err(pattern, &message));
        }
        Ok(hit)
    }

    fn pattern_err(&self, pattern: &str, message: &str) -> InventoryError {
        let (path, pattern, message) = (self.path.clone(), pattern.into(), message.into());
        InventoryError::Pattern {
            path,
            pattern,
            message,
        }
    }
}

impl Host {
    /// The resolved value of variable `key`, if set.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// The last of `names` that is set and not empty (Ansible's ssh plugin lists
    /// `ansible_host, ansible_ssh_host` and the later one wins).
    fn conn_var(&self, names: &[&str]) -> Option<&str> {
        let set = |n: &&str| self.var(n).filter(|v| !v.is_empty());
        names.iter().rev().find_map(set)
    }

    /// `[USER@]HOST[:PORT]` for ssh: ansible_host (else the inventory name, so a Host alias of
    /// ~/.ssh/config works), ansible_user, ansible_port. IPv6 hosts with a port as `[addr]:port`.
    pub fn ssh_target(&self) -> String {
        let host = self.conn_var(&["ansible_host", "ansible_ssh_host"]);
        let host = host.unwrap_or(&self.name);
        let user = self.conn_var(&["ansible_user", "ansible_ssh_user"]);
        let user = user.map(|u| format!("{u}@")).unwrap_or_default();
        match self.conn_var(&["ansible_port", "ansible_ssh_port"]) {
            Some(port) if host.contains(':') => format!("{user}[{host}]:{port}"),
            Some(port) => format!("{user}{host}:{port}"),
            None => format!("{user}{host}"),
        }
    }

    /// Extra ssh arguments in the form Kestrel's ssh layer takes them (`Key=Value` becomes
    /// `-o Key=Value`; text starting with '-' is split at whitespace): the private key file as
    /// `IdentityFile=PATH` (`~/` expanded from $HOME), then ansible_ssh_common_args and
    /// ansible_ssh_extra_args with each flag and its value joined into one string (`-F /x`).
    /// An `-o` value with whitespace comes back bare (`ProxyCommand=ssh -W %h:%p b`) so it
    /// stays one word; any other flag value with whitespace is an error.
    pub fn ssh_options(&self) -> Result<Vec<String>, InventoryError> {
        let mut out = Vec::new();
        let key = self.conn_var(&["ansible_private_key_file", "ansible_ssh_private_key_file"]);
        if let Some(key) = key.map(|k| expand_home(k, std::env::var("HOME").ok().as_deref())) {
            let quote = ["", "\""][key.contains(char::is_whitespace) as usize];
            out.push(format!("IdentityFile={quote}{key}{quote}"));
        }
        for var in ["ansible_ssh_common_args", "ansible_ssh_extra_args"] {
            let args = split_ssh_args(self.var(var).unwrap_or_default());
            out.extend(args.map_err(|message| InventoryError::HostVar {
                path: self.inventory.clone(),
                host: self.name.clone(),
                var: var.into(),
                message,
            })?);
        }
        Ok(out)
    }

    /// Kestrel's own host variable `kestrel_board`: the board type (a board file name).
    pub fn kestrel_board(&self) -> Option<&str> {
        self.var("kestrel_board")
    }

    /// Kestrel's own host variable `kestrel_store`: the agent's store directory on the board.
    pub fn kestrel_store(&self) -> Option<&str> {
        self.var("kestrel_store")
    }

    /// Kestrel's own host variable `kestrel_edge`: the `kestrel-edge` program on the board.
    pub fn kestrel_edge(&self) -> Option<&str> {
        self.var("kestrel_edge")
    }
}

/// A group while parsing; `children` and `parents` are indices into `Builder::groups`.
#[derive(Default)]
struct RawGroup {
    name: String,
    vars: BTreeMap<String, String>,
    priority: i64,
    children: Vec<usize>,
    parents: Vec<usize>,
}

/// Groups and hosts (with their own variables and direct groups) collected from either format,
/// resolved by `finish`.
#[derive(Default)]
struct Builder {
    path: PathBuf,
    groups: Vec<RawGroup>,
    group_ix: HashMap<String, usize>,
    hosts: Vec<Host>,
    host_groups: Vec<Vec<usize>>,
    host_ix: HashMap<String, usize>,
}

impl Builder {
    fn new(path: &Path) -> Builder {
        let path = path.into();
        let mut b = Builder {
            path,
            ..Builder::default()
        };
        b.group("all");
        b.group("ungrouped");
        b
    }

    fn group(&mut self, name: &str) -> usize {
        let next = self.groups.len();
        let g = *self.group_ix.entry(name.into()).or_insert(next);
        if g == next {
            let mut group = RawGroup::default();
            (group.name, group.priority) = (name.into(), 1); // 1: Ansible's default priority
            self.groups.push(group);
        }
        g
    }

    fn add_child(&mut self, parent: usize, child: usize) {
        if !self.groups[parent].children.contains(&child) {
            self.groups[parent].children.push(child);
            self.groups[child].parents.push(parent);
        }
    }

    /// Sets a group variable; `ansible_group_priority` sets the priority instead, as in Ansible.
    fn set_group_var(&mut self, g: usize, key: &str, value: &str) -> Result<(), String> {
        let group = &mut self.groups[g];
        if key.is_empty() {
            return Err(format!("a variable of group {} has no name", group.name));
        } else if key != "ansible_group_priority" {
            group.vars.insert(key.into(), value.into());
        } else if let Ok(priority) = value.trim().parse() {
            group.priority = priority;
        } else {
            let name = &group.name;
            return Err(format!(
                "ansible_group_priority of group {name} must be an integer"
            ));
        }
        Ok(())
    }

    /// Adds the hosts of `pattern` (ranges expanded, `:port` as ansible_port) to group `g`,
    /// then sets `vars` on each; later settings win.
    fn add_hosts(&mut self, pattern: &str, g: usize, vars: &Vars) -> Result<(), String> {
        let (names, port) = expand_host_pattern(pattern)?;
        for name in names {
            let next = self.hosts.len();
            let h = *self.host_ix.entry(name.clone()).or_insert(next);
            if h == next {
                let mut host = Host::default();
                (host.name, host.inventory) = (name, self.path.clone());
                self.hosts.push(host);
                self.host_groups.push(Vec::new());
            }
            if !self.host_groups[h].contains(&g) {
                self.host_groups[h].push(g);
            }
            let host = &mut self.hosts[h].vars;
            host.extend(port.map(|p| ("ansible_port".to_string(), p.to_string())));
            host.extend(vars.iter().cloned());
        }
        Ok(())
    }

    /// A children cycle as `a -> b -> a`, if there is one.
    fn find_cycle(&self) -> Option<String> {
        fn visit(b: &Builder, g: usize, state: &mut [u8], path: &mut Vec<usize>) -> Option<String> {
            if state[g] == 1 {
                let start = path.iter().position(|&x| x == g).unwrap_or(0);
                let names = path[start..].iter().chain([&g]);
                let names: Vec<&str> = names.map(|&x| b.groups[x].name.as_str()).collect();
                return Some(names.join(" -> "));
            } else if state[g] == 2 {
                return None;
            }
            state[g] = 1;
            path.push(g);
            let children = &b.groups[g].children;
            let cycle = children.iter().find_map(|&c| visit(b, c, state, path));
            path.pop();
            state[g] = 2;
            cycle
        }
        let mut state = vec![0; self.groups.len()];
        (0..self.groups.len()).find_map(|g| visit(self, g, &mut state, &mut Vec::new()))
    }

    /// Ansible's `reconcile_inventory` and variable merge: parentless groups become children of
    /// `all`, hosts without another group go to `ungrouped`, group variables merge in the order
    /// of Ansible's `sort_groups` (depth, priority, name), host variables last.
    fn finish(mut self) -> Result<Inventory, InventoryError> {
        let n = self.groups.len();
        for g in 1..n {
            if self.groups[g].parents.is_empty() {
                self.add_child(0, g);
            }
        }
        if let Some(cycle) = self.find_cycle() {
            let message = format!(
                "groups form a cycle ({cycle}); a group cannot be its own descendant, remove one of these children entries"
            );
            return Err(InventoryError::Invalid {
                path: self.path,
                message,
            });
        }
        let (mut depth, mut todo) = (vec![0; n], vec![0]); // depth: longest path from `all`
        while let Some(g) = todo.pop() {
            for &c in &self.groups[g].children {
                if depth[g] + 1 > depth[c] {
                    depth[c] = depth[g] + 1;
                    todo.push(c);
                }
            }
        }
        let mut members = vec![Vec::new(); n];
        for (h, host) in self.hosts.iter_mut().enumerate() {
            let direct = &mut self.host_groups[h];
            if direct.iter().any(|&g| g > 1) {
                direct.retain(|&g| g != 1);
            } else if !direct.contains(&1) {
                direct.push(1);
            }
            let (mut member, mut todo) = (vec![false; n], direct.clone());
            while let Some(g) = todo.pop() {
                if !std::mem::replace(&mut member[g], true) {
                    todo.extend(&self.groups[g].parents);
                }
            }
            let mut order: Vec<usize> = (0..n).filter(|&g| member[g]).collect();
            order.sort_by_key(|&g| (depth[g], self.groups[g].priority, &self.groups[g].name));
            let mut vars = BTreeMap::new();
            for &g in &order {
                vars.extend(self.groups[g].vars.clone());
                members[g].push(h);
                host.groups.push(self.groups[g].name.clone());
            }
            vars.append(&mut host.vars);
            host.vars = vars;
        }
        let names = self.groups.into_iter().map(|g| g.name);
        let (path, hosts, groups) = (self.path, self.hosts, names.zip(members).collect());
        Ok(Inventory {
            path,
            hosts,
            groups,
        })
    }
}

/// `[name]` or `[name:kind]` with an optional trailing comment, as Ansible's section regex.
fn parse_section(line: &str) -> Option<(&str, Option<&str>)> {
    let (inner, after) = line.strip_prefix('[')?.split_once(']')?;
    let (name, kind) = match inner.split_once(':') {
        Some((name, kind)) => (name, Some(kind)),
        None => (inner, None),
    };
    let word = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_');
    let ok = !name.is_empty() && !name.contains(char::is_whitespace) && kind.is_none_or(word);
    let after = after.trim_start();
    (ok && (after.is_empty() || after.starts_with('#'))).then_some((name, kind))
}

/// A `[group:children]` line: one group name, optionally followed by a comment.
fn parse_child_line(line: &str) -> Option<&str> {
    let end = line.find(|c: char| c == ':' || c == ']' || c.is_whitespace());
    let (name, rest) = line.split_at(end.unwrap_or(line.len()));
    let rest = rest.trim_start();
    (!name.is_empty() && (rest.is_empty() || rest.starts_with('#'))).then_some(name)
}

/// A host line: the host pattern and its `key=value` words, in shell quoting, without a
/// trailing `#` comment.
fn parse_host_line(line: &str) -> Result<(String, Box<Vars>), String> {
    let words = shlex::split(strip_comment(line));
    let words = words.ok_or_else(|| format!("unbalanced quotes in {line:?}"))?;
    let mut words = words.into_iter();
    let pattern = words.next().unwrap_or_default();
    if pattern == "---" {
        return Err("'---' starts a YAML document: name a YAML inventory .yml or .yaml".into());
    }
    let vars = words.map(|w| match w.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "expected key=value after host {pattern:?}, got {w:?}"
        )),
    });
    Ok((pattern.clone(), vars.collect::<Result<_, _>>()?))
}

/// `line` up to a `#` outside quotes (what Ansible's Python shlex with comments=True drops).
fn strip_comment(line: &str) -> &str {
    let (mut quote, mut escaped) = (None, false);
    for (i, c) in line.char_indices() {
        match (quote, c) {
            _ if escaped => escaped = false,
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => escaped = true,
            (Some(_), '"') => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// A `[group:vars]` value without its surrounding quotes, if it has matching ones.
fn unquote(v: &str) -> &str {
    let inner = |q| v.strip_prefix(q).and_then(|r| r.strip_suffix(q));
    inner('"').or_else(|| inner('\'')).unwrap_or(v)
}

fn is_ipv6(s: &str) -> bool {
    s.parse::<Ipv6Addr>().is_ok()
}

/// A host pattern's names (ranges expanded) and port, as Ansible's `parse_address`:
/// `name:port`, `[ipv6]:port`, or a bare IPv6 address (which has no port).
fn expand_host_pattern(pattern: &str) -> Result<(Vec<String>, Option<u16>), String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let bracketed = pattern.strip_prefix('[').and_then(|r| r.rsplit_once("]:"));
    let plain = pattern.rsplit_once(':');
    let plain = plain.filter(|(h, _)| split_brackets(h, |c| c == ':').len() == 1);
    let (host, port) = match (bracketed, plain) {
        (Some((addr, port)), _) if is_ipv6(addr) && digits(port) => (addr, Some(port)),
        (_, Some((host, port))) if digits(port) => (host, Some(port)),
        _ => (pattern, None),
    };
    let port = port.map(str::parse::<u16>).transpose();
    let port = port.map_err(|_| format!("bad port in {pattern:?}; ports are 1-65535"))?;
    if is_ipv6(host) {
        Ok((vec![host.into()], port))
    } else if host.is_empty() || host.ends_with(':') {
        Err(format!(
            "bad host name {pattern:?}; write NAME or NAME:PORT"
        ))
    } else {
        Ok((expand_ranges(host)?, port))
    }
}

/// Expands the first `[START:END(:STEP)]` of `name` (numbers, leading zeros kept, or single
/// letters a-z then A-Z), then the rest recursively, as Ansible's `expand_hostname_range`.
fn expand_ranges(name: &str) -> Result<Vec<String>, String> {
    let Some(open) = name.find('[') else {
        return Ok(vec![name.into()]);
    };
    let close = name[open..].find(']').map(|c| open + c);
    let inner = &name[open + 1..close.unwrap_or(name.len())];
    let bad = |why: &str| {
        format!(
            "bad host range [{inner}] in {name:?}: {why}; write [START:END] or [START:END:STEP], e.g. pi[01:12] or cam-[a:f]"
        )
    };
    let close = close.ok_or_else(|| bad("missing ']'"))?;
    let parts: Vec<&str> = inner.split(':').collect();
    let (beg, end) = match parts[..] {
        [_, ""] | [_, "", _] => return Err(bad("END is missing")),
        [beg, end] | [beg, end, _] => (if beg.is_empty() { "0" } else { beg }, end),
        _ => return Err(bad("expected START:END")),
    };
    let step = parts.get(2).map_or(Ok(1), |s| s.parse::<usize>());
    let step = step
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| bad("STEP must be 1 or more"))?;
    const LETTERS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let letter = |s: &str| LETTERS.find(s).filter(|_| s.len() == 1);
    let numbers = (beg.parse::<u64>(), end.parse::<u64>());
    let items: Vec<String> = match (letter(beg), letter(end), numbers) {
        (Some(b), Some(e), _) if b <= e => {
            let letters = LETTERS[b..=e].chars().step_by(step);
            letters.map(String::from).collect()
        }
        (_, _, (Ok(b), Ok(e))) if b <= e => {
            let width = if beg.starts_with('0') { beg.len() } else { 0 };
            if width > 1 && end.len() != width {
                return Err(bad("with leading zeros START and END need as many digits"));
            }
            let range = (b..=e).step_by(step).take(MAX_RANGE_HOSTS + 1);
            range.map(|i| format!("{i:0width$}")).collect()
        }
        (Some(_), Some(_), _) | (_, _, (Ok(_), Ok(_))) => return Err(bad("START is after END")),
        _ => return Err(bad("START and END must be both numbers or both letters")),
    };
    let mut out = Vec::new();
    for item in items {
        let (head, tail) = (&name[..open], &name[close + 1..]);
        out.extend(expand_ranges(&format!("{head}{item}{tail}"))?);
        if out.len() > MAX_RANGE_HOSTS {
            return Err(bad(&format!("more than {MAX_RANGE_HOSTS} hosts")));
        }
    }
    Ok(out)
}

/// `s` cut at the characters `sep` accepts outside `[...]`.
fn split_brackets(s: &str, sep: impl Fn(char) -> bool) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            c if depth == 0 && sep(c) => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A `--limit` value cut into parts as Ansible's `split_host_pattern`: at commas if it has any,
/// else at ':' and whitespace outside `[...]`, unless it is one IPv6 address (has "::" or
/// parses as one; list several IPv6 addresses with commas, as Ansible recommends).
fn split_patterns(s: &str) -> Vec<&str> {
    let bare = s.trim().trim_start_matches(['!', '&']);
    let parts = if s.contains(',') {
        s.split(',').collect()
    } else if bare.contains("::") || is_ipv6(bare) {
        vec![s]
    } else {
        split_brackets(s, |c| c == ':' || c.is_whitespace())
    };
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// The regex of a pattern part: `~regex` anchored at the start (Python's `re.match`), else
/// the fnmatch glob (`*`, `?`, `[abc]`, `[!a-z]`) as Python's `fnmatch.translate`, whole name.
fn pattern_regex(pattern: &str) -> Result<Regex, String> {
    let re = match pattern.strip_prefix('~') {
        Some(re) => format!("^(?:{re})"),
        None => glob_regex(&pattern.chars().collect::<Vec<_>>()),
    };
    Regex::new(&re).map_err(|e| format!("invalid regular expression: {e}"))
}

/// An fnmatch glob as an anchored regex: `*` any text, `?` one character, `[a-z]`/`[!a-z]` a
/// class (an unclosed `[` is literal), everything else literal.
fn glob_regex(p: &[char]) -> String {
    let (mut re, mut i) = (String::from("^(?s:"), 0);
    while i < p.len() {
        let negate = p[i] == '[' && p.get(i + 1) == Some(&'!');
        let first = i + 1 + negate as usize; // a ']' right after '[' or '[!' is literal
        let close = (first + 1..p.len())
            .find(|&j| p[j] == ']')
            .filter(|_| p[i] == '[');
        match (p[i], close) {
            ('*', _) => re.push_str(".*"),
            ('?', _) => re.push('.'),
            ('[', Some(close)) => {
                re.push_str(if negate { "[^" } else { "[" });
                for &c in &p[first..close] {
                    if "\\[]&~^".contains(c) {
                        re.push('\\');
                    }
                    re.push(c);
                }
                re.push(']');
                i = close;
            }
            (c, _) => re += &regex::escape(&c.to_string()),
        }
        i += 1;
    }
    re + ")$"
}

/// A YAML group and (recursively) its children, as Ansible's yaml plugin `_parse_group`.
fn yaml_group(b: &mut Builder, name: &str, data: &Value) -> Result<usize, String> {
    let g = b.group(name);
    let Some(map) = data.as_mapping() else {
        let got = kind(data);
        let message =
            format!("group {name:?} must be a mapping with hosts:, vars:, children:, got {got}");
        return if data.is_null() { Ok(g) } else { Err(message) };
    };
    for (key, value) in map {
        let (key, got) = (value_text(key), kind(value));
        match (key.as_str(), value) {
            ("hosts" | "vars" | "children", Value::Null) => {}
            ("hosts", Value::String(host)) => b.add_hosts(host, g, &[])?,
            ("hosts", Value::Mapping(hosts)) => {
                for (host, vars) in hosts {
                    let host = value_text(host);
                    let vars = match vars {
                        Value::Null => Box::default(),
                        Value::Mapping(m) => var_pairs(m),
                        _ => {
                            return Err(format!(
                                "host {host:?} in group {name:?}: expected a mapping of variables or nothing, got {}",
                                kind(vars)
                            ));
                        }
                    };
                    b.add_hosts(&host, g, &vars)?;
                }
            }
            ("vars", Value::Mapping(vars)) => {
                for (k, v) in var_pairs(vars) {
                    b.set_group_var(g, &k, &v)?;
                }
            }
            ("children", Value::Mapping(children)) => {
                for (child, data) in children {
                    let child = yaml_group(b, &value_text(child), data)?;
                    b.add_child(g, child);
                }
            }
            ("hosts", _) => {
                return Err(format!(
                    "hosts: of group {name:?} must be a mapping, got {got}; write each host as `NAME:`, not as a list item"
                ));
            }
            ("vars" | "children", _) => {
                return Err(format!(
                    "{key}: of group {name:?} must be a mapping, got {got}"
                ));
            }
            _ => {
                return Err(format!(
                    "unexpected key {key:?} in group {name:?}: a group has only hosts:, vars: and children: (host variables go under hosts: NAME:)"
                ));
            }
        }
    }
    Ok(g)
}

fn var_pairs(m: &serde_norway::Mapping) -> Box<Vars> {
    let text = |(k, v)| (value_text(k), value_text(v));
    m.iter().map(text).collect()
}

/// A YAML value as variable text: scalars as written, null as "", others as YAML text.
fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Tagged(t) => value_text(&t.value),
        _ => serde_norway::to_string(v)
            .unwrap_or_default()
            .trim_end()
            .into(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        _ => "a single value",
    }
}

/// Whether `text` is a YAML (or JSON) mapping whose values are all group mappings (or empty),
/// at least one of them a mapping; INI inventories never are.
fn looks_like_yaml_inventory(text: &str) -> bool {
    let Ok(Value::Mapping(top)) = serde_norway::from_str::<Value>(text) else {
        return false;
    };
    let key = |k: &Value| matches!(k.as_str(), Some("hosts" | "vars" | "children"));
    let group = |v: &Value| v.is_null() || v.as_mapping().is_some_and(|g| g.keys().all(key));
    top.values().all(group) && top.values().any(Value::is_mapping)
}

/// `~` or `~/...` with `home` in front; anything else (`~user/`, no $HOME) as it is.
fn expand_home(path: &str, home: Option<&str>) -> String {
    match (path.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{}{rest}", home.trim_end_matches('/'))
        }
        _ => path.into(),
    }
}

/// ssh arguments from `ansible_ssh_common_args`/`_extra_args` (shell words) with each flag
/// joined to its value: "-o A=b -F /x -4" -> ["-o A=b", "-F /x", "-4"].
fn split_ssh_args(text: &str) -> Result<Vec<String>, String> {
    let words = shlex::split(text).ok_or("unbalanced quotes; close the quote")?;
    let (mut words, mut out) = (words.into_iter(), Vec::new());
    while let Some(word) = words.next() {
        let flags = word.strip_prefix('-').filter(|f| !f.is_empty());
        let Some(flags) = flags.filter(|f| !f.starts_with('-')) else {
            return Err(format!(
                "{word:?} is not an ssh option such as -o Key=Value or -F FILE"
            ));
        };
        let Some(at) = flags.find(|c| SSH_VALUE_FLAGS.contains(c)) else {
            out.push(word);
            continue;
        };
        let (before, flag, attached) = (&flags[..at], &flags[at..=at], &flags[at + 1..]);
        let value = match attached {
            "" => words
                .next()
                .ok_or_else(|| format!("-{flag} needs a value"))?,
            _ => attached.to_string(),
        };
        if !value.contains(char::is_whitespace) {
            let joined = format!("{word} {value}");
            out.push(if attached.is_empty() { joined } else { word });
        } else if flag == "o" && !value.starts_with('-') {
            out.extend((!before.is_empty()).then(|| format!("-{before}")));
            out.push(value); // bare Key=Value: the ssh layer passes it as `-o` and one word
        } else {
            return Err(format!(
                "the value of -{flag} ({value:?}) has whitespace, which Kestrel cannot pass as one argument; use the ssh_config form, e.g. -o \"ProxyCommand=...\""
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = r#"# Kestrel test shelf
bench-pi ansible_host=10.0.0.5   # on the desk

[shelf]
shelf-[01:03] kestrel_board=rpi4
shelf-04:2222 ansible_host=10.0.0.14 kestrel_board=rpi5 motd="hello pi"

; the cameras
[cams]
cam-[a:c].lab kestrel_board=zero2w
shelf-02 camera=imx708

[lab:children]
shelf
cams   # both

[lab:vars]
ansible_user = pi
kestrel_store=/var/lib/kestrel
role=lab

[shelf:vars]
role=shelf
kestrel_store="/srv/kestrel store"
fps=30

[cams:vars]
role=cams
debug=true

[all:vars]
ansible_user=root
ntp=pool.ntp.org
"#;

    const YAML: &str = r#"
all:
  hosts:
    bench-pi: {ansible_host: 10.0.0.5}
  vars: {ansible_user: root, ntp: pool.ntp.org}
  children:
    lab:
      vars: {ansible_user: pi, kestrel_store: /var/lib/kestrel, role: lab}
      children:
        shelf:
          hosts:
            shelf-[01:03]: {kestrel_board: rpi4}
            shelf-04:2222:
              ansible_host: 10.0.0.14
              kestrel_board: rpi5
              motd: hello pi
          vars: {role: shelf, kestrel_store: /srv/kestrel store, fps: 30}
        cams:
          hosts:
            cam-[a:c].lab: {kestrel_board: zero2w}
            shelf-02: {camera: imx708}
          vars: {role: cams, debug: true}
"#;

    fn ini(text: &str) -> Inventory {
        Inventory::parse_ini(text, Path::new("hosts.ini")).unwrap()
    }

    fn yaml(text: &str) -> Inventory {
        Inventory::parse_yaml(text, Path::new("hosts.yml")).unwrap()
    }

    /// `name` of `inv`, or a panic.
    fn host<'a>(inv: &'a Inventory, name: &str) -> &'a Host {
        inv.hosts.iter().find(|h| h.name == name).expect(name)
    }

    /// Host names, space-separated.
    fn names<'a>(hosts: impl IntoIterator<Item = &'a Host>) -> String {
        let names: Vec<&str> = hosts.into_iter().map(|h| h.name.as_str()).collect();
        names.join(" ")
    }

    /// Variables `keys` of host `name`, space-separated ("-" for unset).
    fn vars(inv: &Inventory, name: &str, keys: &str) -> String {
        let value = |k| host(inv, name).var(k).unwrap_or("-");
        keys.split(' ').map(value).collect::<Vec<_>>().join(" ")
    }

    fn pick(inv: &Inventory, pattern: &str) -> String {
        names(inv.select(Some(pattern)).unwrap())
    }

    fn with_vars(vars: &[(&str, &str)]) -> Host {
        let mut host = Host::default();
        (host.name, host.inventory) = ("pi-1".into(), "hosts.ini".into());
        for (k, v) in vars {
            host.vars.insert(k.to_string(), v.to_string());
        }
        host
    }

    #[test]
    fn ini_and_yaml_resolve_to_the_same_hosts() {
        let (a, b) = (ini(INI), yaml(YAML));
        assert_eq!(a.hosts.len(), b.hosts.len());
        for (x, y) in a.hosts.iter().zip(&b.hosts) {
            assert_eq!((&x.name, &x.groups, &x.vars), (&y.name, &y.groups, &y.vars));
        }
        let (mut ga, mut gb) = (a.group_names(), b.group_names());
        ga.sort();
        gb.sort();
        assert_eq!(ga, gb);
        let all = "bench-pi shelf-01 shelf-02 shelf-03 shelf-04 cam-a.lab cam-b.lab cam-c.lab";
        assert_eq!(names(&b.hosts), all);
        let s2 = host(&b, "shelf-02");
        assert_eq!(s2.groups, ["all", "lab", "cams", "shelf"]);
        let got: Vec<String> = s2.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let want = "ansible_user=pi camera=imx708 debug=true fps=30 kestrel_board=rpi4 \
                    kestrel_store=/srv/kestrel store ntp=pool.ntp.org role=shelf";
        assert_eq!(got.join(" "), want);
        assert_eq!(vars(&b, "shelf-04", "ansible_port motd"), "2222 hello pi");
        assert_eq!(vars(&b, "bench-pi", "ansible_user role"), "root -");
        assert_eq!(host(&b, "bench-pi").groups, ["all", "ungrouped"]);
        assert_eq!(vars(&a, "cam-b.lab", "role kestrel_board"), "cams zero2w");
    }

    #[test]
    fn ini_comments_quotes_and_ungrouped() {
        let inv = ini(INI);
        assert_eq!(vars(&inv, "bench-pi", "ansible_host"), "10.0.0.5");
        let shelf = host(&inv, "shelf-01");
        assert_eq!(shelf.kestrel_store(), Some("/srv/kestrel store"));
        assert_eq!(host(&inv, "cam-a.lab").kestrel_board(), Some("zero2w"));
        let groups = ["all", "ungrouped", "shelf", "cams", "lab"];
        assert_eq!(inv.group_names(), groups);
        let inv = ini("a x=\"q # no\" y='z' kestrel_edge=/e#c\n[g]\nb # Bob's\n[g]\na\n");
        assert_eq!(vars(&inv, "a", "x y"), "q # no z");
        assert_eq!(host(&inv, "a").kestrel_edge(), Some("/e"));
        assert_eq!(host(&inv, "a").groups, ["all", "g"], "not ungrouped");
        assert_eq!(inv.hosts.len(), 2, "a host listed twice is one host");
    }

    #[test]
    fn precedence_all_parent_child_host() {
        let inv = ini(concat!(
            "[child]\nh1 v4=host\n[parent:children]\nchild\n",
            "[all:vars]\nv1=all\nv2=all\nv3=all\nv4=all\n",
            "[parent:vars]\nv2=parent\nv3=parent\nv4=parent\n",
            "[child:vars]\nv3=child\nv4=child\n",
        ));
        assert_eq!(host(&inv, "h1").groups, ["all", "parent", "child"]);
        assert_eq!(vars(&inv, "h1", "v1 v2 v3 v4"), "all parent child host");
    }

    #[test]
    fn same_depth_by_name_later_lines_win_and_priority() {
        let text = "[zeta]\nh x=1\n[alpha]\nh x=2 y=3\n[zeta:vars]\nv=z\n[alpha:vars]\nv=a\n";
        let inv = ini(text);
        assert_eq!(host(&inv, "h").groups, ["all", "alpha", "zeta"]);
        assert_eq!(vars(&inv, "h", "v x y"), "z 2 3");
        let inv = ini(&format!("{text}ansible_group_priority=10\n"));
        assert_eq!(host(&inv, "h").groups, ["all", "zeta", "alpha"]);
        assert_eq!(vars(&inv, "h", "v ansible_group_priority"), "a -");
        let yml = "top:\n  vars: {v: top, ansible_group_priority: 99}\n  children:\n    \
                   leaf: {hosts: {h: }, vars: {v: leaf}}\n";
        assert_eq!(vars(&yaml(yml), "h", "v"), "leaf", "depth beats priority");
        let text = "[g:vars]\nansible_group_priority=high\n[g]\n";
        let bad = Inventory::parse_ini(text, "x".as_ref());
        let want = "x:2: ansible_group_priority of group g must be an integer";
        assert_eq!(bad.unwrap_err().to_string(), want);
    }

    #[test]
    fn children_defined_later_or_only_as_children() {
        let inv = ini(concat!(
            "[top:children]\nmid\n[mid:children]\nleaf\n[leaf]\nh\n",
            "[ghost:vars]\nv=1\n[top:children]\nghost\n",
        ));
        assert_eq!(host(&inv, "h").groups, ["all", "top", "mid", "leaf"]);
        assert_eq!(inv.group_names()[2..], ["top", "mid", "leaf", "ghost"]);
    }

    #[test]
    fn host_ranges_and_ports() {
        let ok = |p: &str| {
            let (names, port) = expand_host_pattern(p).unwrap();
            (names.join(" "), port)
        };
        assert_eq!(ok("w[01:03].x"), ("w01.x w02.x w03.x".into(), None));
        assert_eq!(ok("n[1:10:4]").0, "n1 n5 n9");
        assert_eq!(ok("c-[x:B]").0, "c-x c-y c-z c-A c-B");
        assert_eq!(ok("r[1:2]s[a:b]:22").0, "r1sa r1sb r2sa r2sb");
        assert_eq!(ok("r[1:2]s[a:b]:22").1, Some(22));
        assert_eq!(ok("[:2]x").0, "0x 1x 2x");
        assert_eq!(ok("[2001:db8::7]:22"), ("2001:db8::7".into(), Some(22)));
        assert_eq!(ok("fe80::1"), ("fe80::1".into(), None));
        for (bad, why) in [
            ("w[1:3", "missing ']'"),
            ("w[3:1]", "START is after END"),
            ("w[01:100]", "need as many digits"),
            ("w[1]", "expected START:END"),
            ("w[1:]", "END is missing"),
            ("w[1:5:0]", "STEP must be 1 or more"),
            ("w[a:3]", "both numbers or both letters"),
            ("w[0:99999]", "more than 10000 hosts"),
            ("w:", "bad host name \"w:\""),
            ("w:99999", "bad port in \"w:99999\""),
        ] {
            let e = expand_host_pattern(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let inv = yaml("all:\n  hosts:\n    pi[1:2]:\n");
        assert_eq!(names(&inv.hosts), "pi1 pi2");
    }

    #[test]
    fn ini_errors_name_file_line_and_fix() {
        for (text, want) in [
            ("[web:hostz]", ":1: unknown section type [web:hostz]; use"),
            ("[g]\nh\n[g:vars]\nword", ":4: expected key=value in"),
            ("# c\n[g]\nh port", ":3: expected key=value after host"),
            ("[g]\nweb[3:1]", ":2: bad host range [3:1]"),
            ("[web servers]", ":1: invalid section header"),
            ("[g:children]\nbad name", ":2: expected a group name"),
            ("[g]\nh x=\"open", ":2: unbalanced quotes"),
            ("\n[nope:vars]\nv=1", ":2: [nope:vars] is for a group"),
            (
                "[a:children]\nb\n[b:children]\na",
                ": groups form a cycle (a -> b -> a)",
            ),
            ("[a:children]\na", ": groups form a cycle (a -> a)"),
            ("---\nall:", ":1: '---' starts a YAML document"),
        ] {
            let e = Inventory::parse_ini(text, "h.ini".as_ref()).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("h.ini{want}")),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn yaml_errors_and_values() {
        for (text, want) in [
            ("all: {hosts: [pi1]}", "hosts: of group \"all\" must be a"),
            ("- pi1", "not a YAML inventory: expected a mapping"),
            ("", "not a YAML inventory"),
            ("plugin: aws_ec2", "not a YAML inventory"),
            ("all: {ansible_user: pi}", "unexpected key \"ansible_user\""),
            ("all: {vars: [a]}", "vars: of group \"all\" must be a"),
            (
                "all: {hosts: {pi1: 3}}",
                "host \"pi1\" in group \"all\": expected",
            ),
            ("all: [", "not valid YAML"),
            (
                "a: {children: {b: {children: {a: }}}}",
                "groups form a cycle",
            ),
        ] {
            let e = Inventory::parse_yaml(text, "h.yml".as_ref()).unwrap_err();
            let e = e.to_string();
            assert!(e.starts_with(&format!("h.yml: {want}")), "{text:?}: {e}");
        }
        let text = "all:\n  hosts:\n    pi1: {l: [1, two], m: {a: true}, n: , f: 1.5}\n";
        let inv = yaml(&format!("{text}  children:\n    g: {{hosts: pi2}}\n"));
        assert_eq!(vars(&inv, "pi1", "l m n f"), "- 1\n- two a: true  1.5");
        assert_eq!(host(&inv, "pi2").groups, ["all", "g"]);
    }

    #[test]
    fn read_detects_format_and_reports_missing_files() {
        let dir = std::env::temp_dir().join(format!("kestrel-inventory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = r#"{"all": {"hosts": {"j1": null}}}"#;
        let files = [("hosts", INI), ("a.yaml", YAML), ("inv", YAML)];
        for (name, text) in [files[0], files[1], files[2], ("i.json", json)] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let read = |name: &str| Inventory::read(&dir.join(name));
        assert_eq!(read("hosts").unwrap().hosts[7].name, "cam-c.lab");
        assert_eq!(read("a.yaml").unwrap().hosts[7].name, "cam-c.lab");
        assert_eq!(vars(&read("inv").unwrap(), "shelf-01", "fps"), "30");
        assert_eq!(names(&read("i.json").unwrap().hosts), "j1");
        let e = read("absent.ini").unwrap_err().to_string();
        let path = dir.join("absent.ini");
        let want = format!("cannot read inventory {}: ", path.display());
        assert!(e.starts_with(&want) && e.ends_with("--inventory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn select_every_pattern_form() {
        let inv = ini(INI);
        assert_eq!(inv.select(None).unwrap().len(), 8);
        assert_eq!(pick(&inv, "all"), names(&inv.hosts));
        assert_eq!(pick(&inv, "*"), names(&inv.hosts));
        assert_eq!(pick(&inv, "shelf-03"), "shelf-03");
        assert_eq!(pick(&inv, "cams"), "shelf-02 cam-a.lab cam-b.lab cam-c.lab");
        assert_eq!(pick(&inv, "ungrouped"), "bench-pi");
        let shelf = "shelf-01 shelf-02 shelf-03 shelf-04";
        assert_eq!(pick(&inv, "shelf-0?"), shelf);
        assert_eq!(pick(&inv, "cam-*"), "cam-a.lab cam-b.lab cam-c.lab");
        assert_eq!(pick(&inv, "shelf-0[!12]"), "shelf-03 shelf-04");
        assert_eq!(pick(&inv, "~cam-[ab]"), "cam-a.lab cam-b.lab");
        assert_eq!(pick(&inv, "~(bench|shelf-01)"), "bench-pi shelf-01");
        let order = pick(&inv, "cam-c.lab:bench-pi");
        assert_eq!(order, "bench-pi cam-c.lab", "inventory order");
        let once = "shelf-01 shelf-02 shelf-03 shelf-04 cam-a.lab cam-b.lab cam-c.lab";
        assert_eq!(pick(&inv, "cams,shelf"), once, "each host once");
        assert_eq!(pick(&inv, "shelf-01 cam-a.lab"), "shelf-01 cam-a.lab");
        assert_eq!(pick(&inv, "lab:!cams"), "shelf-01 shelf-03 shelf-04");
        assert_eq!(pick(&inv, "!cams:lab"), pick(&inv, "lab:!cams"), "! last");
        assert_eq!(pick(&inv, "&cams:shelf"), "shelf-02", "& after the union");
        assert_eq!(pick(&inv, "!lab"), "bench-pi", "only exclusions: from all");
        let ips = ini("192.168.1.10\n192.168.1.11\n192.168.2.10\n");
        assert_eq!(pick(&ips, "192.168.1.*"), "192.168.1.10 192.168.1.11");
        let v6 = ini("fe80::1\n[2001:db8::5]:2222\nfe80::2\n");
        assert_eq!(pick(&v6, "fe80::1"), "fe80::1");
        assert_eq!(pick(&v6, "!fe80::1"), "2001:db8::5 fe80::2");
        assert_eq!(pick(&v6, "fe80::2,2001:db8::5"), "2001:db8::5 fe80::2");
    }

    #[test]
    fn select_errors_name_the_pattern() {
        let inv = ini(INI);
        let err = |p: &str| inv.select(Some(p)).unwrap_err().to_string();
        let groups = "all, ungrouped, shelf, cams, lab";
        let want = "hosts.ini: host pattern \"shelve\": matches no host or group; the groups are";
        assert_eq!(err("shelve:cams"), format!("{want}: {groups}"));
        assert!(err("cams:!nothere").contains("pattern \"nothere\": matches no host"));
        assert!(err("cams:!cams").contains("pattern \"cams:!cams\": selects no hosts"));
        assert!(err("~web(").contains("pattern \"~web(\": invalid regular expression"));
        assert!(err(" , ").contains("pattern \" , \": empty"));
        assert!(err("cams:!").contains("pattern \"\": matches no host"));
    }

    #[test]
    fn glob_matching() {
        let m = |p: &str, s: &str| pattern_regex(p).unwrap().is_match(s);
        assert!(m("a*b*c", "aXbYbZc") && !m("a*b*c", "aXbYbZ") && !m("a.c", "abc"));
        assert!(m("[a-c]x", "bx") && !m("[a-c]x", "dx") && m("[!a-c]x", "dx"));
        assert!(m("[]]", "]") && m("x[", "x[") && m("*", "") && !m("?", ""));
        assert!(m("~pi", "pi-7") && !m("~pi$", "pi-7") && !m("pi", "pi-7"));
    }

    #[test]
    fn ssh_target_forms() {
        let target = |vars: &[(&str, &str)]| with_vars(vars).ssh_target();
        let plain = [("ansible_host", "10.0.0.7"), ("ansible_user", "pi")];
        let plain = [plain[0], plain[1], ("ansible_port", "22")];
        assert_eq!(target(&plain), "pi@10.0.0.7:22");
        assert_eq!(target(&[]), "pi-1", "alias only: the inventory name");
        assert_eq!(target(&[("ansible_user", "")]), "pi-1", "empty = unset");
        let v6 = [("ansible_host", "fe80::7"), ("ansible_port", "22")];
        assert_eq!(target(&v6), "[fe80::7]:22");
        assert_eq!(target(&v6[..1]), "fe80::7");
        let old = [("ansible_host", "a"), ("ansible_ssh_host", "b")];
        let old = [old[0], old[1], ("ansible_ssh_user", "u")];
        assert_eq!(target(&old), "u@b");
        let shelf = host(&ini(INI), "shelf-04").ssh_target();
        assert_eq!(shelf, "pi@10.0.0.14:2222");
    }

    #[test]
    fn ssh_options_forms() {
        let home = std::env::var("HOME").map(|h| h.trim_end_matches('/').to_string());
        let key = format!("IdentityFile={}/.ssh/pi", home.as_deref().unwrap_or("~"));
        let common = "-o StrictHostKeyChecking=no -F /x -4 -o 'ProxyCommand=ssh -W %h:%p b'";
        let h = with_vars(&[
            ("ansible_ssh_private_key_file", "~/.ssh/pi"),
            ("ansible_ssh_common_args", common),
            ("ansible_ssh_extra_args", "-oBatchMode=yes -vJ jump@host"),
        ]);
        let got = h.ssh_options().unwrap();
        assert_eq!(got[0], key);
        assert_eq!(got[1..4], ["-o StrictHostKeyChecking=no", "-F /x", "-4"]);
        assert_eq!(
            got[4..],
            [
                "ProxyCommand=ssh -W %h:%p b",
                "-oBatchMode=yes",
                "-vJ jump@host"
            ]
        );
        assert_eq!(with_vars(&[]).ssh_options().unwrap(), Vec::<String>::new());
        let spaced = with_vars(&[("ansible_private_key_file", "/keys/my key")]);
        let spaced = spaced.ssh_options().unwrap();
        assert_eq!(spaced, ["IdentityFile=\"/keys/my key\""]);
        assert_eq!(expand_home("~/k", Some("/home/pi/")), "/home/pi/k");
        assert_eq!(expand_home("~bob/k", Some("/h")), "~bob/k");
        assert_eq!(expand_home("/k", Some("/h")), "/k");
    }

    #[test]
    fn ssh_options_errors_name_host_and_variable() {
        let err = |var: &str, v: &str| with_vars(&[(var, v)]).ssh_options().unwrap_err();
        let e = err("ansible_ssh_common_args", "-F '/my config'").to_string();
        let want = "hosts.ini: host pi-1: variable ansible_ssh_common_args: the value of -F";
        let want = format!("{want} (\"/my config\") has whitespace");
        assert!(e.starts_with(&want), "{e}");
        let e = err("ansible_ssh_extra_args", "-o").to_string();
        let want = "variable ansible_ssh_extra_args: -o needs a value";
        assert!(e.ends_with(want), "{e}");
        let e = err("ansible_ssh_extra_args", "bastion").to_string();
        assert!(e.ends_with("\"bastion\" is not an ssh option such as -o Key=Value or -F FILE"));
        let e = err("ansible_ssh_common_args", "-o 'A=b").to_string();
        assert!(e.ends_with("unbalanced quotes; close the quote"), "{e}");
    }
}
