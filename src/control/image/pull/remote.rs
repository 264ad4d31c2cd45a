//! The registry side of one pull: the `oci-client` client, the reference
//! in its terms, the credentials as its auth, the login (`/v2/`), and the
//! wording of a failure (which image, which registry, doing what).

use oci_client::RegistryOperation;

use super::super::error::ImageError;
use super::super::reference::Reference;
use super::super::registry::{oci_reference, Credentials, Doing, RegistryConfig};

/// The registry side of one pull: client, reference, auth, and what to say
/// when something fails.
pub(super) struct Remote {
    pub(super) client: oci_client::Client,
    pub(super) reference: oci_client::Reference,
    pub(super) auth: oci_client::secrets::RegistryAuth,
    pub(super) registry: String,
    pub(super) image: String,
    anonymous: bool,
}

impl Remote {
    /// The session for pulling `reference` with `credentials`; nothing is
    /// sent yet.
    pub(super) fn new(
        registries: &RegistryConfig,
        reference: &Reference,
        credentials: &Credentials,
    ) -> Result<Remote, ImageError> {
        let name = reference.to_string();
        let oci = oci_reference(reference)?;
        Ok(Remote {
            client: registries.client(),
            auth: credentials.to_auth(&name)?,
            registry: oci.resolve_registry().to_string(),
            reference: oci,
            image: name,
            anonymous: credentials.is_anonymous(),
        })
    }

    /// Reaches the registry API (`/v2/`) and logs in for pulling.
    pub(super) async fn login(&self) -> Result<(), ImageError> {
        self.client
            .auth(&self.reference, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(self.fail("reaching the registry API (/v2/)"))?;
        Ok(())
    }

    fn doing(&self, what: impl Into<String>) -> Doing<'_> {
        Doing {
            image: &self.image,
            registry: &self.registry,
            what: what.into(),
            anonymous: self.anonymous,
        }
    }

    pub(super) fn fail(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(oci_client::errors::OciDistributionError) -> ImageError + '_ {
        let what = what.into();
        move |e| self.doing(what).fail(e)
    }
}
