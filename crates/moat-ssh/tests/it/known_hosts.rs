//! `known_hosts` lookups agree with OpenSSH's own `ssh-keygen -F`, hashed entries included.

use moat_ssh::KnownHosts;
use moat_ssh::PublicKeyBlob;
use moat_ssh::SshHost;
use tokio::process::Command;

use crate::support::KeyFile;

async fn keygen_find(file: &std::path::Path, host: &str) -> Vec<PublicKeyBlob> {
    let out = Command::new("/usr/bin/ssh-keygen")
        .arg("-F")
        .arg(host)
        .arg("-f")
        .arg(file)
        .output()
        .await
        .expect("/usr/bin/ssh-keygen must be installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (_, key) = l.split_once(' ').expect("host and key");
            PublicKeyBlob::from_openssh(key).expect("key")
        })
        .collect()
}

#[tokio::test]
async fn hashed_and_plain_lookups_match_ssh_keygen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = KeyFile::generate(dir.path(), "a", "ed25519").await;
    let b = KeyFile::generate(dir.path(), "b", "ecdsa").await;
    let c = KeyFile::generate(dir.path(), "c", "ed25519").await;
    let file = dir.path().join("known_hosts");
    std::fs::write(
        &file,
        format!(
            "github.com {}\ngithub.com {}\n[git.example.org]:2222 {}\nother.example {}\n",
            a.openssh(),
            b.openssh(),
            c.openssh(),
            c.openssh()
        ),
    )
    .expect("write");
    let out = Command::new("/usr/bin/ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&file)
        .output()
        .await
        .expect("ssh-keygen -H");
    assert!(
        out.status.success(),
        "ssh-keygen -H failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hashed = std::fs::read_to_string(&file).expect("read");
    assert!(
        hashed.lines().all(|l| l.starts_with("|1|")),
        "every line hashed: {hashed}"
    );
    assert!(!hashed.contains("github.com"));

    let known = KnownHosts::parse(&hashed);
    assert!(known.skipped().is_empty(), "{:?}", known.skipped());
    for (host, keygen_name) in [
        ("github.com", "github.com"),
        ("git.example.org:2222", "[git.example.org]:2222"),
        ("git.example.org", "git.example.org"),
        ("other.example", "other.example"),
        ("absent.example", "absent.example"),
    ] {
        let ours = known.lookup(&host.parse::<SshHost>().expect("host")).keys;
        let theirs = keygen_find(&file, keygen_name).await;
        assert_eq!(
            ours, theirs,
            "lookup of {host} disagrees with ssh-keygen -F"
        );
    }
    assert_eq!(
        known.lookup(&"github.com".parse().expect("host")).keys,
        vec![a.public.clone(), b.public.clone()]
    );
}
