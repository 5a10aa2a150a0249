//! Access-rule configuration (`[auth]`, `pull`/`push`/`delete` lists of
//! `[global]` and `[repository."X"]`) and the decisions built from it. The
//! input is read as a small program choosing identities, lists and keys from
//! a vocabulary with hostile entries, so most inputs are configurations the
//! loader must judge; each accepted one is checked against a model written
//! here from the README's rules, for every namespace, identity and action.
#![no_main]

use angos::auth::{AccessPolicy, Action, Principal};
use libfuzzer_sys::fuzz_target;

const HASH: &str = "$pbkdf2-sha256$i=10000,l=32$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const NAMES: &[&str] = &[
    "alice",
    "bob",
    "ci",
    "*",
    "authenticated",
    "nobody",
    "",
    "a b",
    "ALICE",
];
const KEYS: &[&str] = &["a", "a/b", "b", "production", "a/b/c", "x y", "", "b/"];
const NAMESPACES: &[&str] = &[
    "a",
    "a/b",
    "a/bc",
    "ab",
    "b",
    "b/c",
    "production/api",
    "zzz",
    "a/b/c/d",
];
const ACTIONS: [(&str, Action); 3] = [
    ("pull", Action::Pull),
    ("push", Action::Push),
    ("delete", Action::Delete),
];

/// One list as the model sees it.
#[derive(Clone, Default)]
struct Lists([Option<Vec<String>>; 3]);

fuzz_target!(|input: &[u8]| {
    let mut bytes = input.iter().copied();
    let mut next = move || bytes.next();
    let mut identities: Vec<(String, String)> = Vec::new();
    let mut global = Lists::default();
    let mut repositories: Vec<(String, Lists)> = Vec::new();
    let mut administrators: Option<Vec<String>> = None;
    let mut toml = String::new();
    let pick_list = |next: &mut dyn FnMut() -> Option<u8>| -> Vec<String> {
        let len = next().unwrap_or(0) % 4;
        (0..len)
            .map(|_| NAMES[next().unwrap_or(0) as usize % NAMES.len()].to_string())
            .collect()
    };
    while let Some(op) = next() {
        match op % 4 {
            0 => {
                let name = NAMES[next().unwrap_or(0) as usize % NAMES.len()].to_string();
                let username = format!("user-{}", next().unwrap_or(0) % 4);
                toml.push_str(&format!(
                    "[auth.identity.\"{name}\"]\nusername = \"{username}\"\npassword = \"{HASH}\"\n"
                ));
                identities.retain(|(existing, _)| existing != &name);
                identities.push((name, username));
            }
            1 => {
                let action = next().unwrap_or(0) as usize % 3;
                let list = pick_list(&mut next);
                toml.push_str(&format!("[global]\n{} = {list:?}\n", ACTIONS[action].0));
                global.0[action] = Some(list);
            }
            2 => {
                let key = KEYS[next().unwrap_or(0) as usize % KEYS.len()].to_string();
                let action = next().unwrap_or(0) as usize % 3;
                let list = pick_list(&mut next);
                toml.push_str(&format!(
                    "[repository.\"{key}\"]\n{} = {list:?}\n",
                    ACTIONS[action].0
                ));
                match repositories.iter_mut().find(|(existing, _)| existing == &key) {
                    Some((_, lists)) => lists.0[action] = Some(list),
                    None => {
                        let mut lists = Lists::default();
                        lists.0[action] = Some(list);
                        repositories.push((key, lists));
                    }
                }
            }
            _ => {
                let list = pick_list(&mut next);
                toml.push_str(&format!("[auth]\nadministrators = {list:?}\n"));
                administrators = Some(list);
            }
        }
        // Each table goes to its own file: later files override earlier ones.
        toml.push('\0');
    }
    let sources: Vec<(String, String)> = toml
        .split('\0')
        .enumerate()
        .map(|(index, part)| (format!("fuzz-{index}.toml"), part.to_string()))
        .collect();
    let Ok(loaded) = angos::config::load_sources(&sources) else {
        return;
    };
    let policy = AccessPolicy::new(&loaded.config);
    // What the loader accepted must be sane in the model's terms too.
    let defined = |name: &str| identities.iter().any(|(id, _)| id == name);
    let all_lists = global
        .0
        .iter()
        .chain(repositories.iter().flat_map(|(_, lists)| lists.0.iter()))
        .flatten();
    for list in all_lists {
        for name in list {
            assert!(
                name == "*" || name == "authenticated" || defined(name),
                "{name:?} accepted"
            );
        }
    }
    let mut principals = vec![(Principal::Anonymous, None)];
    for (id, username) in &identities {
        let index = policy
            .find_username(username)
            .expect("every identity's user name resolves");
        assert_eq!(&policy.identities()[index].id, id);
        principals.push((Principal::Identity(index), Some(id.as_str())));
    }
    let enabled = !identities.is_empty();
    assert_eq!(policy.authentication_enabled(), enabled);
    for namespace in NAMESPACES {
        let owner = repositories
            .iter()
            .find(|(key, _)| *namespace == key.as_str() || namespace.starts_with(&format!("{key}/")));
        for (index, (_, action)) in ACTIONS.iter().enumerate() {
            let list = owner
                .and_then(|(_, lists)| lists.0[index].clone())
                .or_else(|| global.0[index].clone());
            for (principal, id) in &principals {
                let expected = match &list {
                    None => enabled == id.is_some(),
                    Some(names) => names.iter().any(|name| {
                        name == "*"
                            || (id.is_some() && (name == "authenticated" || Some(name.as_str()) == *id))
                    }),
                };
                assert_eq!(
                    policy.allows(*principal, *action, namespace),
                    expected,
                    "{principal:?} {action:?} {namespace}"
                );
            }
        }
    }
    for (principal, id) in &principals {
        let expected = !enabled
            || id.is_some_and(|id| {
                administrators
                    .as_ref()
                    .is_some_and(|list| list.iter().any(|n| n == id))
            });
        assert_eq!(policy.is_administrator(*principal), expected);
    }
});
