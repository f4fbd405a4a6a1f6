//! A corpus of path traversal attempts against a real directory tree with a
//! secret file outside the root and symlinks pointing out of it. Every attempt
//! gets its exact, documented status, and no byte of the secret ever appears.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

#[path = "support/helpers.rs"]
mod helpers;

use std::os::unix::fs::symlink;
use std::path::Path;

use gatehouse_files::StaticOptions;
use helpers::*;
use http::{Method, StatusCode};

const SECRET: &str = "TOP-SECRET-7d1f0c52-do-not-serve";

struct Tree {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
}

fn tree() -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let root = base.join("root");
    write(base, "outside/secret.txt", SECRET);
    write(base, "secret.txt", SECRET);
    write(&root, "index.html", "<p>home</p>");
    write(&root, "sub/a.txt", "inside a");
    write(&root, ".env", SECRET);
    write(&root, ".git/config", SECRET);
    write(&root, "sub/.hidden", SECRET);
    symlink("../outside/secret.txt", root.join("link_out")).unwrap();
    symlink("../outside", root.join("dirlink")).unwrap();
    symlink(base.join("outside/secret.txt"), root.join("abs_link")).unwrap();
    symlink("../../outside/secret.txt", root.join("sub/link_up")).unwrap();
    symlink("sub/a.txt", root.join("link_in")).unwrap();
    symlink("does-not-exist", root.join("dangling")).unwrap();
    symlink("/etc/passwd", root.join("passwd")).unwrap();
    let fifo = std::process::Command::new("mkfifo").arg(root.join("fifo")).status();
    assert!(fifo.is_ok_and(|s| s.success()), "mkfifo");
    Tree { _tmp: tmp, root }
}

const BAD: StatusCode = StatusCode::BAD_REQUEST;
const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;
const OK: StatusCode = StatusCode::OK;

fn corpus() -> Vec<(String, StatusCode)> {
    let long = format!("/{}", "a/".repeat(2100));
    let v: Vec<(&str, StatusCode)> = vec![
        // Plain and encoded dot-dot.
        ("/../outside/secret.txt", BAD),
        ("/../secret.txt", BAD),
        ("/%2e%2e/outside/secret.txt", BAD),
        ("/%2E%2E/outside/secret.txt", BAD),
        ("/.%2e/outside/secret.txt", BAD),
        ("/%2e./outside/secret.txt", BAD),
        ("/sub/../../outside/secret.txt", BAD),
        ("/sub/%2e%2e/%2e%2e/outside/secret.txt", BAD),
        ("/./././../outside/secret.txt", BAD),
        ("/sub/./../..", BAD),
        ("/sub/a.txt/..", BAD),
        // Encoded separators.
        ("/..%2foutside%2fsecret.txt", BAD),
        ("/..%2Foutside%2Fsecret.txt", BAD),
        ("/%2e%2e%2foutside%2fsecret.txt", BAD),
        ("/sub%2f..%2f..%2foutside%2fsecret.txt", BAD),
        ("/%2fetc%2fpasswd", BAD),
        ("/..%5coutside%5csecret.txt", BAD),
        ("/%5c%5cserver%5cshare", BAD),
        ("/c:%5cwindows%5cwin.ini", BAD),
        // Literal backslashes and Windows paths.
        ("/..\\outside\\secret.txt", BAD),
        ("/sub\\..\\..\\outside\\secret.txt", BAD),
        ("/\\\\server\\share\\secret.txt", BAD),
        ("/C:/Windows/win.ini", BAD),
        ("/c:", BAD),
        ("/index.html::$DATA", BAD),
        ("/sub/a.txt:stream", BAD),
        // Double encoding is decoded once: literal names that do not exist.
        ("/%252e%252e/outside/secret.txt", NOT_FOUND),
        ("/%252e%252e%252foutside%252fsecret.txt", NOT_FOUND),
        ("/%25252e%25252e/", NOT_FOUND),
        // Decoded once this is the literal name "..%2f..%2f…": a dotfile.
        ("/..%252f..%252foutside%252fsecret.txt", FORBIDDEN),
        ("/%252e%252e%255coutside", NOT_FOUND),
        // Overlong and invalid UTF-8.
        ("/%c0%ae%c0%ae/outside/secret.txt", BAD),
        ("/%c0%af", BAD),
        ("/..%c0%af../outside/secret.txt", BAD),
        ("/%e0%80%ae%e0%80%ae/outside/secret.txt", BAD),
        ("/%c1%9c", BAD),
        ("/%f0%80%80%ae", BAD),
        ("/%ff%fe", BAD),
        // Look-alike dots are just names.
        ("/%ef%bc%8e%ef%bc%8e/outside/secret.txt", NOT_FOUND),
        ("/..;/outside/secret.txt", FORBIDDEN), // "..;" is a dotfile name
        ("/a..;/outside/secret.txt", NOT_FOUND),
        // NUL and control characters.
        ("/secret.txt%00.html", BAD),
        ("/index.html%00", BAD),
        ("/%00", BAD),
        ("/sub/..%00/secret.txt", BAD),
        ("/%0d%0aSet-Cookie:%20x=y", BAD),
        ("/sub/%09a.txt", BAD),
        // Malformed escapes.
        ("/%%32%65%%32%65/outside", BAD),
        ("/%2", BAD),
        ("/%", BAD),
        ("/%u002e%u002e/outside", BAD),
        ("/%zz", BAD),
        // Not a path at all.
        ("", BAD),
        ("outside/secret.txt", BAD),
        ("*", BAD),
        // Dotfiles.
        ("/.env", FORBIDDEN),
        ("/%2eenv", FORBIDDEN),
        ("/.git/config", FORBIDDEN),
        ("/.git/", FORBIDDEN),
        ("/sub/.hidden", FORBIDDEN),
        ("/..../outside/secret.txt", FORBIDDEN),
        ("/.../outside", FORBIDDEN),
        // Symlinks leading out of the root.
        ("/link_out", FORBIDDEN),
        ("/dirlink/secret.txt", FORBIDDEN),
        ("/dirlink/", FORBIDDEN),
        ("/dirlink", FORBIDDEN),
        ("/abs_link", FORBIDDEN),
        ("/sub/link_up", FORBIDDEN),
        ("/passwd", FORBIDDEN),
        // Special files are never opened.
        ("/fifo", FORBIDDEN),
        // Things that simply are not under the root.
        ("/outside/secret.txt", NOT_FOUND),
        ("/secret.txt", NOT_FOUND),
        ("/etc/passwd", NOT_FOUND),
        ("//server/share/secret.txt", NOT_FOUND),
        ("/dangling", NOT_FOUND),
        ("/sub/a.txt/", NOT_FOUND),
        // Controls: legitimate requests still work.
        ("/", OK),
        ("/index.html", OK),
        ("/sub/a.txt", OK),
        ("//sub//./a.txt", OK),
        ("/sub/a.txt?../../outside/secret.txt", OK),
        ("/link_in", OK),
        ("/%73ub/a.txt", OK),
    ];
    let mut v: Vec<(String, StatusCode)> = v.into_iter().map(|(p, s)| (p.to_owned(), s)).collect();
    v.push((long, BAD));
    v
}

async fn run(root: &Path, spa: bool) -> usize {
    let mut opts = StaticOptions::dir(root);
    opts.spa = spa;
    opts.listing = true;
    let svc = service(opts);
    let mut checked = 0;
    for (path, want) in corpus() {
        for method in [Method::GET, Method::HEAD] {
            let got = req(&svc, method.clone(), &path, &[]).await;
            let body = String::from_utf8_lossy(&got.body);
            assert!(!body.contains(SECRET), "{method} {path:?} leaked the secret");
            assert!(!body.contains("root:x:0:0"), "{method} {path:?} leaked /etc/passwd");
            if !spa {
                assert_eq!(got.status, want, "{method} {path:?}");
            } else if want != NOT_FOUND {
                // The SPA fallback only ever turns a 404 into index.html.
                assert_eq!(got.status, want, "{method} {path:?} (spa)");
            } else {
                assert!(got.status == NOT_FOUND || got.status == OK, "{path:?} (spa)");
            }
            checked += 1;
        }
    }
    checked
}

#[tokio::test]
async fn traversal_corpus_is_contained() {
    let t = tree();
    assert!(corpus().len() >= 50, "corpus has {} entries", corpus().len());
    let n = run(&t.root, false).await + run(&t.root, true).await;
    assert!(n >= 300);
}

#[tokio::test]
async fn listing_does_not_reveal_outside_or_dotfiles() {
    let t = tree();
    let mut opts = StaticOptions::dir(&t.root);
    opts.listing = true;
    let svc = service(opts);
    let g = get(&svc, "/").await;
    assert_eq!(g.status, OK);
    let g = get(&svc, "/sub/").await;
    let html = String::from_utf8_lossy(&g.body);
    assert!(html.contains("a.txt"));
    assert!(!html.contains(".hidden") && !html.contains(SECRET));
}

#[tokio::test]
async fn root_reached_through_a_symlink_still_works() {
    let t = tree();
    let alias = t.root.parent().unwrap().join("alias");
    symlink(&t.root, &alias).unwrap();
    let svc = service(StaticOptions::dir(&alias));
    assert_eq!(get(&svc, "/sub/a.txt").await.body, "inside a");
    assert_eq!(get(&svc, "/link_out").await.status, FORBIDDEN);
}

#[tokio::test]
async fn following_outside_symlinks_is_opt_in() {
    let t = tree();
    let mut opts = StaticOptions::dir(&t.root);
    opts.follow_symlinks_outside_root = true;
    let svc = service(opts);
    // The operator asked for it: the link is followed.
    assert_eq!(get(&svc, "/link_out").await.status, OK);
    // Path rules still hold regardless.
    assert_eq!(get(&svc, "/../outside/secret.txt").await.status, BAD);
    assert_eq!(get(&svc, "/.env").await.status, FORBIDDEN);
}
