//! `chorus cert`: per-host client certificates (issue, list, revoke).

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{bail, Context};
use chorus_wire::certs::{self, IssueOptions};
use chorus_wire::revoke::{self, RevocationList, REVOKED_FILE};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CertCommand {
    /// Sign a client certificate for one host with the cluster CA and write a
    /// client bundle (ca.pem, client.pem, client.key; no CA key) to copy to
    /// that host. Its root is squashed to nobody unless --trust-root.
    #[command(
        after_help = "Examples:\n  chorus cert issue --certs ./certs --name web-1 --out ./bundle-web-1\n  chorus cert issue --certs ./certs --name backup --out ./bundle-backup --days 30 --trust-root\n  # on web-1: chorus mount --certs ./bundle-web-1 --server A,B,C /mnt/chorus"
    )]
    Issue {
        /// The cluster's certificates folder (with ca.key).
        #[arg(long, default_value = "chorus-data/certs")]
        certs: PathBuf,
        /// The client host (a-z, 0-9, '-'): names the certificate in logs and for `revoke --name`.
        #[arg(long)]
        name: String,
        /// Folder to write the bundle to (created; must not hold one).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid (at most 3650, and not past the CA's expiry).
        #[arg(long, default_value_t = certs::CLIENT_DAYS_DEFAULT)]
        days: u32,
        /// Let requests over this certificate act as root (uid 0). Without it
        /// root on that host is nobody (65534) on the file system.
        #[arg(long)]
        trust_root: bool,
    },
    /// Add certificates to the revocation list (certs/revoked). Servers read
    /// it within a second; copy it to every server's certificates folder.
    #[command(
        after_help = "Examples:\n  chorus cert revoke --certs ./certs --name web-1            # every certificate issued for web-1\n  chorus cert revoke --certs ./certs --cert ./bundle-web-1/client.pem\n  chorus cert revoke --certs ./certs --fingerprint 3f2a…(64 hex digits)"
    )]
    Revoke {
        #[arg(long, default_value = "chorus-data/certs")]
        certs: PathBuf,
        /// Every certificate issued for this host (from certs/issued/).
        #[arg(long)]
        name: Option<String>,
        /// A certificate file.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// A certificate's SHA-256 fingerprint (as `chorus cert list` shows it).
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// List the certificates issued with `chorus cert issue`: host, expiry, root, revoked.
    List {
        #[arg(long, default_value = "chorus-data/certs")]
        certs: PathBuf,
    },
}

pub fn run(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Issue { certs, name, out, days, trust_root } => {
            let opts = IssueOptions::for_days(&name, days, trust_root)?;
            let issued = certs::issue_client(&certs, &out, &opts)
                .with_context(|| format!("cannot issue a certificate for {name} from {}", certs.display()))?;
            println!(
                "issued a client certificate for {name}, valid until {}{}\n  bundle: {} (ca.pem, client.pem, client.key; no CA key)\n  fingerprint: {}\n  mount with: chorus mount --certs {} --server A,B,C DIR",
                certs::day(issued.not_after),
                if trust_root { ", trusted as root" } else { "; root on that host is nobody (65534)" },
                out.display(),
                issued.fingerprint,
                out.display()
            );
            Ok(())
        }
        CertCommand::Revoke { certs, name, cert, fingerprint } => {
            let mut targets: Vec<(String, String)> = Vec::new();
            if let Some(name) = &name {
                let found: Vec<_> = certs::list_issued(&certs)?.into_iter().filter(|c| c.info.host.as_deref() == Some(name)).collect();
                if found.is_empty() {
                    bail!("no certificate issued for {name:?} in {}", certs.join(certs::ISSUED_DIR).display());
                }
                targets.extend(found.into_iter().map(|c| (c.info.fingerprint, format!("host {name}"))));
            }
            if let Some(path) = &cert {
                let der = certs::read_cert_file(path)?;
                let info = certs::cert_info(&der);
                targets.push((info.fingerprint.clone(), format!("{} from {}", info.label(), path.display())));
            }
            if let Some(fp) = &fingerprint {
                let fp = revoke::normalize(fp).with_context(|| format!("{fp:?} is not a SHA-256 fingerprint (64 hex digits)"))?;
                targets.push((fp, "by fingerprint".into()));
            }
            if targets.is_empty() {
                bail!("say what to revoke: --name HOST, --cert FILE or --fingerprint HEX");
            }
            let list = certs.join(REVOKED_FILE);
            let stamp = certs::day(SystemTime::now());
            for (fp, what) in targets {
                if revoke::append(&list, &fp, &format!("{what}, revoked {stamp}"))? {
                    println!("revoked {fp} ({what})");
                } else {
                    println!("already revoked: {fp} ({what})");
                }
            }
            println!(
                "servers using {} refuse these certificates within a second (open connections at their next request);\ncopy {} to the certificates folder of every other server",
                certs.display(),
                list.display()
            );
            Ok(())
        }
        CertCommand::List { certs } => {
            let revoked = RevocationList::in_certs_dir(&certs);
            let issued = certs::list_issued(&certs)?;
            if issued.is_empty() {
                println!("no certificates issued from {} yet (`chorus cert issue`)", certs.display());
            }
            let now = SystemTime::now();
            for c in issued {
                let until = c.validity.map(|(_, until)| until);
                let state = if revoked.is_revoked(&c.info.fingerprint) {
                    "revoked"
                } else if until.is_some_and(|u| u < now) {
                    "expired"
                } else {
                    "valid"
                };
                println!(
                    "{:<20} {:<8} until {}  {:<13} {}",
                    c.info.host.as_deref().unwrap_or("?"),
                    state,
                    until.map(certs::day).unwrap_or_else(|| "?".into()),
                    if c.info.trust_root { "root trusted" } else { "root squashed" },
                    c.info.fingerprint
                );
            }
            Ok(())
        }
    }
}
