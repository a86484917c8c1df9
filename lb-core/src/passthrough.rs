//! What a stream wrapper handed to pingora passes through unchanged: pingora's `IO` wants a
//! stream to tell its TLS details, digests and id and to peek, and a wrapper that changes only
//! how bytes flow (write coalescing, a frame check) answers all of that from the stream it
//! wraps. One macro, so every wrapper passes the same things the same way.

/// Implements pingora's stream capabilities other than reading, writing and shutting down
/// (`UniqueID`, `Ssl`, `GetTimingDigest`, `GetProxyDigest`, `GetSocketDigest`, `Peek`) for
/// a wrapper by asking its field `$inner`: `Wrapper<S>` over any `S: IO`
/// (`pass_through_capabilities!(Wrapper<S>, inner)`), or a wrapper of pingora's boxed
/// `Stream` (`pass_through_capabilities!(Wrapper, inner)`).
macro_rules! pass_through_capabilities {
    ($wrapper:ident<S>, $inner:ident) => {
        $crate::passthrough::pass_through_capabilities!(@impl [S: pingora::protocols::IO] $wrapper<S>, $inner);
    };
    ($wrapper:ident, $inner:ident) => {
        $crate::passthrough::pass_through_capabilities!(@impl [] $wrapper, $inner);
    };
    (@impl [$($bound:tt)*] $wrapper:ty, $inner:ident) => {
        impl<$($bound)*> pingora::protocols::UniqueID for $wrapper {
            fn id(&self) -> pingora::protocols::UniqueIDType {
                self.$inner.id()
            }
        }

        impl<$($bound)*> pingora::protocols::Ssl for $wrapper {
            fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
                self.$inner.get_ssl()
            }

            fn get_ssl_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::tls::SslDigest>> {
                self.$inner.get_ssl_digest()
            }

            fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
                self.$inner.selected_alpn_proto()
            }
        }

        impl<$($bound)*> pingora::protocols::GetTimingDigest for $wrapper {
            fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
                self.$inner.get_timing_digest()
            }
        }

        impl<$($bound)*> pingora::protocols::GetProxyDigest for $wrapper {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
                self.$inner.get_proxy_digest()
            }

            fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
                self.$inner.set_proxy_digest(digest);
            }
        }

        impl<$($bound)*> pingora::protocols::GetSocketDigest for $wrapper {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::SocketDigest>> {
                self.$inner.get_socket_digest()
            }

            fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
                self.$inner.set_socket_digest(digest);
            }
        }

        #[async_trait::async_trait]
        impl<$($bound)*> pingora::protocols::Peek for $wrapper {
            async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
                self.$inner.try_peek(buf).await
            }
        }
    };
}

pub(crate) use pass_through_capabilities;
