//! The EC2 calls `infra ec2` makes, through aws-sdk-ec2, with errors turned into messages
//! that say what to do.
use super::{say, NAME_PREFIX, RUN_TAG};
use anyhow::{anyhow, bail, Context};
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::config::ProvideCredentials;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, Instance, InstanceStateName, InstanceType, IpPermission, IpRange, Ipv6Range,
    ResourceType, Tag, TagSpecification, UserIdGroupPair,
};
use aws_sdk_ec2::Client;
use std::time::Duration;

/// How long the waiters wait for instances to run or terminate.
pub const WAIT_LIMIT: Duration = Duration::from_secs(600);

/// A connected EC2 client and what it points at.
pub struct Api {
    pub client: Client,
    pub region: String,
    /// `--endpoint-url` (or the SDK's own `AWS_ENDPOINT_URL[_EC2]`), for messages.
    pub endpoint: Option<String>,
}

/// The HTTPS client: rustls with ring (which reqwest builds anyway) instead of the SDK's
/// default aws-lc, which would compile a C library.
fn https_client() -> aws_sdk_ec2::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

impl Api {
    /// Loads the SDK configuration with the standard chains (environment, profile, SSO,
    /// ...), checks that there is a region and that credentials can be loaded.
    pub async fn connect(region: Option<&str>, endpoint_url: Option<&str>) -> anyhow::Result<Api> {
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https_client());
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_string()));
        }
        if let Some(u) = endpoint_url {
            loader = loader.endpoint_url(u);
        }
        let conf = loader.load().await;
        let region = conf
            .region()
            .map(|r| r.to_string())
            .context("no AWS region: pass --region (e.g. --region us-east-1) or set AWS_REGION / a profile's region")?;
        let endpoint = endpoint_url
            .map(str::to_string)
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_EC2").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        let provider = conf
            .credentials_provider()
            .context("no AWS credentials provider configured")?;
        if let Err(e) = provider.provide_credentials().await {
            bail!(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE \
                 (a profile in ~/.aws/config or ~/.aws/credentials), or run `aws sso login` for an SSO profile \
                 ({})",
                DisplayErrorContext(&e)
            );
        }
        Ok(Api {
            client: Client::new(&conf),
            region,
            endpoint,
        })
    }

    fn where_(&self) -> String {
        match &self.endpoint {
            Some(u) => format!("region {} at {u}", self.region),
            None => format!("region {}", self.region),
        }
    }

    /// An SDK error as a message: credentials refused, quota reached, endpoint unreachable
    /// get their own advice; anything else shows the service's code and message.
    pub fn explain<E, R>(&self, what: &str, e: &SdkError<E, R>) -> anyhow::Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        if let SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) = e {
            return anyhow!(
                "{what}: cannot reach EC2 ({}): {}",
                self.where_(),
                DisplayErrorContext(e)
            );
        }
        let code = e.code().unwrap_or("");
        let msg = e.message().unwrap_or("");
        match explain_code(code, msg) {
            Some(advice) => anyhow!("{what}: {advice}"),
            None if !code.is_empty() => anyhow!("{what}: {code}: {msg} ({})", self.where_()),
            None => anyhow!("{what}: {} ({})", DisplayErrorContext(e), self.where_()),
        }
    }

    /// The newest available x86_64 image whose name matches `pattern` (EC2 wildcards `*`
    /// and `?`) among those owned by `owner` (an account id, or `amazon`, `self`).
    pub async fn find_image(&self, pattern: &str, owner: &str) -> anyhow::Result<(String, String)> {
        let out = self
            .client
            .describe_images()
            .owners(owner)
            .filters(filter("name", pattern))
            .filters(filter("state", "available"))
            .filters(filter("architecture", "x86_64"))
            .send()
            .await
            .map_err(|e| self.explain("looking for the image", &e))?;
        let best = out
            .images()
            .iter()
            .filter(|i| i.image_id().is_some())
            .max_by(|a, b| {
                (a.creation_date().unwrap_or(""), a.name().unwrap_or(""))
                    .cmp(&(b.creation_date().unwrap_or(""), b.name().unwrap_or("")))
            })
            .with_context(|| {
                format!(
                    "no image named {pattern:?} owned by {owner} in {} (x86_64, available); \
                     pick another with --image-name PATTERN and --image-owner ACCOUNT",
                    self.where_()
                )
            })?;
        Ok((
            best.image_id().unwrap_or_default().to_string(),
            best.name().unwrap_or_default().to_string(),
        ))
    }

    /// Imports a public key as key pair `name`, tagged with the run.
    pub async fn import_key(&self, name: &str, public_key: &[u8], run: &str) -> anyhow::Result<()> {
        self.client
            .import_key_pair()
            .key_name(name)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(public_key.to_vec()))
            .tag_specifications(tags(ResourceType::KeyPair, run))
            .send()
            .await
            .map_err(|e| self.explain(&format!("importing key pair {name}"), &e))?;
        Ok(())
    }

    /// Creates the run's security group: SSH and the frontends' ports from `allow` only, the
    /// service ports from members of the group only. Returns its id.
    pub async fn create_security_group(&self, name: &str, run: &str) -> anyhow::Result<String> {
        let out = self
            .client
            .create_security_group()
            .group_name(name)
            .description(format!("bookstore run {run}: ssh and frontend from the operator, services within the group"))
            .tag_specifications(tags(ResourceType::SecurityGroup, run))
            .send()
            .await
            .map_err(|e| self.explain(&format!("creating security group {name}"), &e))?;
        out.group_id()
            .map(str::to_string)
            .with_context(|| format!("creating security group {name}: no group id in the answer"))
    }

    /// Adds the ingress rules (see [`Api::create_security_group`]).
    pub async fn authorize(
        &self,
        group_id: &str,
        allow: &str,
        frontend_ports: (u16, u16),
        service_ports: (u16, u16),
    ) -> anyhow::Result<()> {
        let from_operator = |(from, to): (u16, u16), what: &str| {
            let p = IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(from.into())
                .to_port(to.into());
            if allow.contains(':') {
                p.ipv6_ranges(
                    Ipv6Range::builder()
                        .cidr_ipv6(allow)
                        .description(what)
                        .build(),
                )
                .build()
            } else {
                p.ip_ranges(IpRange::builder().cidr_ip(allow).description(what).build())
                    .build()
            }
        };
        let within = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(service_ports.0.into())
            .to_port(service_ports.1.into())
            .user_id_group_pairs(
                UserIdGroupPair::builder()
                    .group_id(group_id)
                    .description("bookstore services, from members of this group only")
                    .build(),
            )
            .build();
        self.client
            .authorize_security_group_ingress()
            .group_id(group_id)
            .ip_permissions(from_operator((22, 22), "ssh from the operator"))
            .ip_permissions(from_operator(
                frontend_ports,
                "bookstore frontends from the operator",
            ))
            .ip_permissions(within)
            .send()
            .await
            .map_err(|e| self.explain("adding the security group's rules", &e))?;
        Ok(())
    }

    /// Opens one more service port to the members of the group (for a replica `add`
    /// placed beyond the ports `up` opened). A rule that exists already is fine.
    pub async fn authorize_within(&self, group_id: &str, port: u16) -> anyhow::Result<()> {
        let within = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(port.into())
            .to_port(port.into())
            .user_id_group_pairs(
                UserIdGroupPair::builder()
                    .group_id(group_id)
                    .description("bookstore service, from members of this group only")
                    .build(),
            )
            .build();
        match self
            .client
            .authorize_security_group_ingress()
            .group_id(group_id)
            .ip_permissions(within)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidPermission.Duplicate") => Ok(()),
            Err(e) => Err(self.explain(&format!("opening port {port} in {group_id}"), &e)),
        }
    }

    /// Launches `n` instances in one call, tagged with the run. Returns their ids.
    #[allow(clippy::too_many_arguments)]
    pub async fn launch(
        &self,
        n: u32,
        image_id: &str,
        instance_type: &str,
        key_name: &str,
        group_id: &str,
        run: &str,
    ) -> anyhow::Result<Vec<String>> {
        let out = self
            .client
            .run_instances()
            .image_id(image_id)
            .instance_type(InstanceType::from(instance_type))
            .min_count(n as i32)
            .max_count(n as i32)
            .key_name(key_name)
            .security_group_ids(group_id)
            .client_token(format!("{run}-{n}"))
            .tag_specifications(tags(ResourceType::Instance, run))
            .tag_specifications(tags(ResourceType::Volume, run))
            .send()
            .await
            .map_err(|e| self.explain(&format!("launching {n} {instance_type} instances"), &e))?;
        let ids: Vec<String> = out
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        if ids.len() != n as usize {
            bail!(
                "launching {n} instances: EC2 answered with {} ({})",
                ids.len(),
                ids.join(", ")
            );
        }
        Ok(ids)
    }

    pub async fn wait_running(&self, ids: &[String]) -> anyhow::Result<()> {
        let waiter = self.client.wait_until_instance_running();
        let waited = waiter.set_instance_ids(Some(ids.to_vec())).wait(WAIT_LIMIT);
        gave_up(waited.await, "run", ids)
    }

    pub async fn describe(&self, ids: &[String]) -> anyhow::Result<Vec<Instance>> {
        let out = self
            .client
            .describe_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| self.explain("describing the instances", &e))?;
        let mut v: Vec<Instance> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances().iter().cloned())
            .collect();
        v.sort_by_key(|i| {
            (
                i.ami_launch_index().unwrap_or(0),
                i.instance_id().unwrap_or("").to_string(),
            )
        });
        Ok(v)
    }

    /// Instances carrying the run tag (any run if `run` is None) that are not terminated.
    pub async fn tagged_instances(
        &self,
        run: Option<&str>,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let live = Filter::builder()
            .name("instance-state-name")
            .set_values(Some(
                ["pending", "running", "stopping", "stopped", "shutting-down"]
                    .map(String::from)
                    .to_vec(),
            ))
            .build();
        let by_run = run_filter(run);
        let filters = vec![live, by_run];
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| self.explain("looking for the runs' instances", &e))?;
            for r in page.reservations() {
                for i in r.instances() {
                    if let Some(id) = i.instance_id() {
                        out.push((id.to_string(), tag_of(i.tags(), RUN_TAG)));
                    }
                }
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Terminates instances (already terminated or unknown ones are fine) and waits.
    pub async fn terminate(&self, ids: &[String]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let r = self
            .client
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => {
                // Some are gone already: terminate the rest one by one.
                for id in ids {
                    match self
                        .client
                        .terminate_instances()
                        .instance_ids(id)
                        .send()
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => {
                            say(&format!("instance {id} no longer exists"));
                        }
                        Err(e) => return Err(self.explain(&format!("terminating {id}"), &e)),
                    }
                }
            }
            Err(e) => return Err(self.explain("terminating the instances", &e)),
        }
        let live: Vec<String> = self
            .describe(ids)
            .await
            .unwrap_or_default()
            .iter()
            .filter(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        say(&format!("waiting for {} to terminate", live.join(", ")));
        let waiter = self.client.wait_until_instance_terminated();
        let waited = waiter.set_instance_ids(Some(live.clone())).wait(WAIT_LIMIT);
        gave_up(waited.await, "terminate", &live)
    }

    /// Deletes a security group; a missing one is fine. While terminated instances still
    /// hold it (DependencyViolation), retries for up to 3 minutes.
    pub async fn delete_security_group(&self, group_id: &str) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            match self
                .client
                .delete_security_group()
                .group_id(group_id)
                .send()
                .await
            {
                Ok(_) => return Ok(()),
                Err(e)
                    if matches!(
                        e.code(),
                        Some("InvalidGroup.NotFound" | "InvalidGroupId.NotFound")
                    ) =>
                {
                    return Ok(())
                }
                Err(e)
                    if e.code() == Some("DependencyViolation")
                        && std::time::Instant::now() < deadline =>
                {
                    say(&format!(
                        "security group {group_id} is still in use; retrying in 5 s"
                    ));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(e) => {
                    return Err(self.explain(&format!("deleting security group {group_id}"), &e))
                }
            }
        }
    }

    /// Deletes a key pair; a missing one is fine.
    pub async fn delete_key_pair(&self, name: &str) -> anyhow::Result<()> {
        match self.client.delete_key_pair().key_name(name).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidKeyPair.NotFound") => Ok(()),
            Err(e) => Err(self.explain(&format!("deleting key pair {name}"), &e)),
        }
    }

    /// Security groups carrying the run tag (any run if None), or named `bookstore-<run>`.
    /// Returns (group id, run).
    pub async fn tagged_security_groups(
        &self,
        run: Option<&str>,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let by_tag = run_filter(run);
        // One run's group is also found by its exact name (in case its tag is missing);
        // every run's groups only by tag, so nobody else's `bookstore-...` group is touched.
        let mut filters = vec![by_tag];
        if let Some(r) = run {
            filters.push(filter("group-name", &format!("{NAME_PREFIX}{r}")));
        }
        let mut out: Vec<(String, String)> = Vec::new();
        for f in filters {
            let page = self
                .client
                .describe_security_groups()
                .filters(f)
                .send()
                .await
                .map_err(|e| self.explain("looking for the runs' security groups", &e))?;
            for g in page.security_groups() {
                let Some(id) = g.group_id() else { continue };
                let name = g.group_name().unwrap_or("");
                let mut run_of = tag_of(g.tags(), RUN_TAG);
                if run_of.is_empty() {
                    run_of = name.strip_prefix(NAME_PREFIX).unwrap_or("").to_string();
                }
                if !out.iter().any(|(g, _)| g == id) {
                    out.push((id.to_string(), run_of));
                }
            }
        }
        Ok(out)
    }

    /// Key pairs carrying the run tag (any run if None). Returns (key name, run).
    pub async fn tagged_key_pairs(
        &self,
        run: Option<&str>,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let f = run_filter(run);
        let page = self
            .client
            .describe_key_pairs()
            .filters(f)
            .send()
            .await
            .map_err(|e| self.explain("looking for the runs' key pairs", &e))?;
        Ok(page
            .key_pairs()
            .iter()
            .filter_map(|k| {
                k.key_name()
                    .map(|n| (n.to_string(), tag_of(k.tags(), RUN_TAG)))
            })
            .collect())
    }
}

/// Advice for error codes a person can act on.
pub fn explain_code(code: &str, msg: &str) -> Option<String> {
    const QUOTA: [&str; 8] = [
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "InsufficientInstanceCapacity",
        "SecurityGroupLimitExceeded",
        "RulesPerSecurityGroupLimitExceeded",
        "ResourceLimitExceeded",
        "KeyPairLimitExceeded",
    ];
    const AUTH: [&str; 6] = [
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "RequestExpired",
    ];
    if QUOTA.contains(&code) {
        Some(format!(
            "AWS quota or capacity reached ({code}: {msg}). Launch fewer or smaller instances \
             (--hosts, --instance-type), try another region (--region), or ask for a higher \
             limit in the Service Quotas console (e.g. \"Running On-Demand Standard instances\")"
        ))
    } else if AUTH.contains(&code) {
        Some(format!(
            "AWS refused the credentials ({code}: {msg}). Check AWS_PROFILE / AWS_ACCESS_KEY_ID, \
             run `aws sso login` if the SSO session expired, and that the identity may use EC2"
        ))
    } else if code == "VPCIdNotSpecified" || code == "VPCResourceNotSpecified" {
        Some(format!(
            "this region has no default VPC ({code}: {msg}); create one with \
             `aws ec2 create-default-vpc` or use another region"
        ))
    } else if code == "InvalidAMIID.NotFound" || code == "InvalidAMIID.Unavailable" {
        Some(format!(
            "the image is gone ({code}: {msg}); pick another with --image-name"
        ))
    } else {
        None
    }
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn tags(kind: ResourceType, run: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .tags(Tag::builder().key(RUN_TAG).value(run).build())
        .tags(
            Tag::builder()
                .key("Name")
                .value(format!("{NAME_PREFIX}{run}"))
                .build(),
        )
        .build()
}

fn tag_of(tags: &[Tag], key: &str) -> String {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .unwrap_or("")
        .to_string()
}

/// The filter on the run tag: one run's resources, or (`None`) every run's.
fn run_filter(run: Option<&str>) -> Filter {
    match run {
        Some(r) => filter(&format!("tag:{RUN_TAG}"), r),
        None => filter("tag-key", RUN_TAG),
    }
}

/// What a waiter for `ids` came to: nothing, or the error of one that gave up waiting
/// for them to `what`.
fn gave_up<T, E: std::error::Error + 'static>(
    waited: Result<T, E>,
    what: &str,
    ids: &[String],
) -> anyhow::Result<()> {
    let ids = ids.join(", ");
    waited
        .map(drop)
        .map_err(|e| anyhow!("waiting for {ids} to {what}: {}", DisplayErrorContext(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_and_auth_errors_get_advice() {
        let q = explain_code("VcpuLimitExceeded", "You have requested more vCPU capacity").unwrap();
        assert!(
            q.contains("quota") && q.contains("--hosts") && q.contains("Service Quotas"),
            "{q}"
        );
        let a = explain_code("AuthFailure", "AWS was not able to validate").unwrap();
        assert!(a.contains("credentials"), "{a}");
        assert!(explain_code("InvalidParameterValue", "x").is_none());
    }
}
