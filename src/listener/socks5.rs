//! SOCKS5 (RFC 1928) with username/password (RFC 1929): greeting, optional authentication, one
//! CONNECT request. Every malformed step that has a reply code gets it before the close.

use bytes::BytesMut;
use pingora::protocols::Stream;

use super::io::{read_until, write_reply};
use super::{Listener, Request};
use crate::auth::Check;
use crate::outcome::Outcome;
use crate::protocol::socks5;
use crate::reply::Answer;
use crate::session::OpenError;

impl Listener {
    pub(super) async fn socks5(&self, mut stream: Stream, mut buf: BytesMut, mut req: Request) {
        // No method offered: "no acceptable methods" is the answer RFC 1928 has.
        let no_method = |_: &_| {
            Some(Answer::raw(
                socks5::method_reply(socks5::NO_ACCEPTABLE).to_vec(),
            ))
        };
        let Some((methods, used)) = self
            .read_message(
                &mut stream,
                &mut buf,
                &req,
                socks5::parse_greeting,
                no_method,
            )
            .await
        else {
            return;
        };
        let _ = buf.split_to(used);
        let method = if self.proxy.wants_users() && methods.contains(&socks5::USER_PASS) {
            socks5::USER_PASS
        } else if methods.contains(&socks5::NO_AUTH) {
            socks5::NO_AUTH
        } else {
            let why = "no acceptable authentication method".to_string();
            self.finish_refused(&req, None, Outcome::BadRequest, why, 0);
            write_reply(&mut stream, &socks5::method_reply(socks5::NO_ACCEPTABLE)).await;
            return;
        };
        write_reply(&mut stream, &socks5::method_reply(method)).await;
        if method == socks5::USER_PASS {
            let Ok(parsed) =
                read_until(&mut stream, &mut buf, req.deadline, socks5::parse_user_pass).await
            else {
                return;
            };
            let verdict = match parsed {
                Ok((creds, used)) => {
                    let _ = buf.split_to(used);
                    let check = self
                        .proxy
                        .auth
                        .check(req.who.client, &creds.username, &creds.password)
                        .await;
                    if check == Check::Valid {
                        req.who.user = Some(creds.username);
                    }
                    check
                }
                Err(_) => Check::Invalid,
            };
            if verdict != Check::Valid {
                let why = if verdict == Check::Throttled {
                    "too many failed logins from this client; try again later"
                } else {
                    "invalid credentials"
                };
                self.finish_refused(&req, None, Outcome::AuthFailed, why.into(), 0);
                write_reply(&mut stream, &socks5::user_pass_reply(false)).await;
                return;
            }
            write_reply(&mut stream, &socks5::user_pass_reply(true)).await;
        }
        let refusal = |e: &socks5::Error| e.reply().map(|code| Answer::socks5(code, None));
        let Some((request, used)) = self
            .read_message(&mut stream, &mut buf, &req, socks5::parse_request, refusal)
            .await
        else {
            return;
        };
        req.handshake_done();
        let early = buf.split_off(used);
        if request.command != socks5::Command::Connect {
            let e = OpenError::BadRequest("only CONNECT is supported".into());
            let answer = Answer::socks5(socks5::Reply::CommandNotSupported, None);
            self.refuse(&mut stream, &req, Some(&request.target), &e, answer)
                .await;
            return;
        }
        self.open_and_tunnel(
            req,
            stream,
            &request.target,
            early,
            |up| Answer::socks5(socks5::Reply::Succeeded, up.stream.local_addr().ok()),
            Answer::socks5_open,
        )
        .await;
    }
}
