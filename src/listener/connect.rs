//! HTTP `CONNECT host:port`: the head under the listener's deadline and limits, the same hygiene
//! and authentication as forwarded requests, then a tunnel.

use bytes::BytesMut;
use pingora::protocols::Stream;

use super::io::{read_until, write_reply};
use super::{Listener, Request};
use crate::outcome::Outcome;
use crate::protocol::http;
use crate::reply;

impl Listener {
    pub(super) async fn connect(&self, mut stream: Stream, mut buf: BytesMut, mut req: Request) {
        let Ok(parsed) = read_until(&mut stream, &mut buf, req.deadline, http::parse_head).await
        else {
            return;
        };
        let checked = parsed.and_then(|(head, used)| {
            http::hygiene(&head)?;
            let target = http::connect_target(&head.target)?;
            Ok((head, used, target))
        });
        let (head, used, target) = match checked {
            Ok(done) => done,
            Err(e) => {
                self.finish_refused(&req, None, Outcome::BadRequest, e.to_string());
                write_reply(&mut stream, &reply::http_error(e.status(), &e.to_string())).await;
                return;
            }
        };
        let early = buf.split_off(used);
        if let Err(why) = self.authenticate(&head, &mut req.who).await {
            self.finish_refused(&req, Some(&target), Outcome::AuthFailed, why.into());
            write_reply(&mut stream, &reply::proxy_auth_required(&self.realm())).await;
            return;
        }
        let realm = self.realm();
        self.open_and_tunnel(
            req,
            stream,
            &target,
            early,
            |_| http::connect_established().to_vec(),
            |e| reply::http_open_failure(e, &realm),
        )
        .await;
    }
}
