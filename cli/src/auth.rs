//! `a3s-code auth permissions`: the nats-server permission block of each role, so operators
//! never write them by hand (docs/protocol.md §8).

use a3s_code_core::broker::permissions::{Permissions, Role};

#[derive(clap::Args)]
pub(crate) struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(clap::Subcommand)]
enum AuthCommand {
    /// Print a `users` entry for nats-server's `authorization { users = [...] }` with the
    /// permissions of a role, and the inbox prefix its clients must use.
    Permissions(PermissionsArgs),
}

#[derive(clap::Args)]
struct PermissionsArgs {
    /// worker, session, admin, viewer or monitor.
    #[arg(long)]
    role: String,
    /// Confine the credential to one tenant (workers: that tenant's tasks, results and
    /// objects only; without it a worker serves every tenant).
    #[arg(long)]
    tenant: Option<String>,
    /// Subject and stream prefix (must match the sessions').
    #[arg(long, env = "A3S_NATS_PREFIX", default_value = "a3s")]
    prefix: String,
    /// The user name in the block.
    #[arg(long, default_value = "a3s")]
    user: String,
    /// The password in the block (use a secret store; nats-server also takes bcrypt hashes).
    #[arg(long, env = "A3S_NATS_PASSWORD", hide_env_values = true)]
    password: String,
}

pub(crate) fn run(args: AuthArgs) -> anyhow::Result<()> {
    match args.command {
        AuthCommand::Permissions(p) => {
            let role: Role = p.role.parse()?;
            let perms = Permissions::for_role(role, &p.prefix, p.tenant.as_deref())?;
            println!(
                "# a3s-code {} credential{} (prefix {}); its clients use inbox prefix {}\n# (--inbox-prefix / A3S_NATS_INBOX_PREFIX / NatsConfig::with_inbox_prefix)",
                p.role,
                p.tenant
                    .as_deref()
                    .map(|t| format!(" of tenant {t}"))
                    .unwrap_or_default(),
                p.prefix,
                perms.inbox_prefix
            );
            println!("{}", perms.to_nats_config(&p.user, &p.password));
            Ok(())
        }
    }
}
