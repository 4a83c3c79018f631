//! The code the attributes expand to: the calls to rpc-core's
//! `ServiceBuilder` a user would write by hand, and a typed client.

use crate::model::{ContextArg, Entrypoint, Form, Kind, Param, ServiceArgs};
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Error, Ident, ImplItem, ItemImpl, ItemTrait, LitStr, TraitItem, Type, Visibility};

/// Reads every annotated method of an impl block or trait.
fn entrypoints<'a>(
    items: impl Iterator<Item = (&'a mut Vec<syn::Attribute>, &'a mut syn::Signature)>,
    form: Form,
    every_method: bool,
) -> syn::Result<Vec<Entrypoint>> {
    let mut found = Vec::new();
    let mut errors: Option<Error> = None;
    for (attrs, sig) in items {
        let kind = match crate::model::take_kind(attrs) {
            Ok(Some((kind, _))) => kind,
            Ok(None) if every_method => Kind::Rpc {
                wire_name: String::new(),
            },
            Ok(None) => continue,
            Err(e) => {
                combine(&mut errors, e);
                continue;
            }
        };
        if form == Form::Client && !matches!(kind, Kind::Rpc { .. }) {
            combine(
                &mut errors,
                Error::new(sig.ident.span(), "a client describes RPC methods only"),
            );
            continue;
        }
        match crate::model::read_entrypoint(kind, sig, attrs, form) {
            Ok(e) => found.push(e),
            Err(e) => combine(&mut errors, e),
        }
    }
    // Two entrypoints with one name on the wire would shadow each other (a
    // client may describe one remote method in several ways).
    let mut names = std::collections::HashSet::new();
    for e in found.iter().filter(|_| form == Form::Service) {
        let (name, span) = match &e.kind {
            Kind::Rpc { wire_name } => (wire_name.clone(), e.sig.ident.span()),
            _ => (e.sig.ident.to_string(), e.sig.ident.span()),
        };
        if !names.insert(name.clone()) {
            combine(
                &mut errors,
                Error::new(span, format!("two entrypoints are called `{name}`")),
            );
        }
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

fn combine(errors: &mut Option<Error>, e: Error) {
    match errors {
        Some(all) => all.combine(e),
        None => *errors = Some(e),
    }
}

/// The arguments the method is called with, in its own order, the context
/// in its place.
fn call_arguments(e: &Entrypoint, ctx: &Ident) -> Vec<TokenStream> {
    let mut out: Vec<TokenStream> = e.params.iter().map(|p| p.ident.to_token_stream()).collect();
    if let Some((index, how)) = e.context {
        let arg = match how {
            ContextArg::Borrowed => quote!(&#ctx),
            ContextArg::Owned => quote!(::core::clone::Clone::clone(&#ctx)),
        };
        out.insert(index.min(out.len()), arg);
    }
    out
}

use quote::ToTokens;

/// The default value of an optional parameter, typed as the parameter.
fn default_value(p: &Param) -> TokenStream {
    let ty = &p.ty;
    match &p.default {
        Some(Some(expr)) => {
            // A string literal for a `String` (or `Cow`, …) parameter needs
            // a conversion; anything else is written as its own type, so
            // `#[default(5)] n: u8` stays a `u8` literal.
            let is_str = matches!(expr, syn::Expr::Lit(l) if matches!(l.lit, syn::Lit::Str(_)));
            if is_str {
                quote_spanned!(expr.span()=> {
                    let __rpc_default: #ty = ::core::convert::Into::into(#expr);
                    __rpc_default
                })
            } else {
                quote_spanned!(expr.span()=> {
                    let __rpc_default: #ty = #expr;
                    __rpc_default
                })
            }
        }
        // An `Option<T>` without a default: `None`.
        _ => quote!(::rpc_core::Value::Null),
    }
}

/// One `.method(..)`, `.timer(..)` or `.event_handler(..)` call on
/// `builder`, calling `Self::method` on the shared value.
fn registration(e: &Entrypoint) -> TokenStream {
    let method = &e.sig.ident;
    let this = format_ident!("__rpc_this");
    let ctx = format_ident!("__rpc_ctx");
    let args = call_arguments(e, &ctx);
    let call = quote!(Self::#method(&*#this, #(#args),*).await);
    let share = quote!(let #this = ::std::sync::Arc::clone(&#this););
    // A bound the builder puts on the method's types is reported at the
    // method's return type, not at the attribute.
    let at = e.sig.output.span();
    let (method_fn, timer_fn, event_fn) = (
        Ident::new("method", at),
        Ident::new("timer", at),
        Ident::new("event_handler", at),
    );
    match &e.kind {
        Kind::Rpc { wire_name } => {
            let signature = e.params.iter().map(|p| {
                let name = &p.wire_name;
                if p.optional() {
                    let value = default_value(p);
                    quote!(.optional(#name, #value))
                } else {
                    quote!(.param(#name))
                }
            });
            let names = e.params.iter().map(|p| &p.ident);
            let types = e.params.iter().map(|p| &p.ty);
            quote! {
                .#method_fn(
                    #wire_name,
                    ::rpc_core::Signature::new() #(#signature)*,
                    {
                        #share
                        move |#ctx: ::rpc_core::Context, (#(#names,)*): (#(#types,)*)| {
                            #share
                            async move { #call }
                        }
                    },
                )
            }
        }
        Kind::Timer { eager, .. } => {
            let name = method.to_string();
            let eager = eager.then(|| quote!(.eager()));
            let interval = interval_ident(e);
            quote! {
                .#timer_fn(
                    #name,
                    ::rpc_core::Timer::every(#interval) #eager,
                    {
                        #share
                        move |#ctx: ::rpc_core::Context| {
                            #share
                            async move { #call }
                        }
                    },
                )
            }
        }
        Kind::Event(ev) => {
            let name = method.to_string();
            let (source, event) = (&ev.source, &ev.event);
            let base = match ev.handler_type.as_ref().map(LitStr::value).as_deref() {
                Some("singleton") => quote!(singleton),
                Some("broadcast") => quote!(broadcast),
                _ => quote!(service_pool),
            };
            let reliable = ev
                .reliable_delivery
                .as_ref()
                .map(|b| quote!(.reliable_delivery(#b)));
            let requeue = ev
                .requeue_on_error
                .as_ref()
                .map(|b| quote!(.requeue_on_error(#b)));
            let identifier = ev
                .broadcast_identifier
                .as_ref()
                .map(|id| quote!(.broadcast_identifier(#id)));
            let data = &e.params[0].ident;
            let data_ty = &e.params[0].ty;
            quote! {
                .#event_fn(
                    #name,
                    ::rpc_core::Subscription::to(#event).from(#source),
                    ::rpc_core::EventHandlerOptions::#base() #reliable #requeue #identifier,
                    {
                        #share
                        move |#ctx: ::rpc_core::Context, #data: #data_ty| {
                            #share
                            async move { #call }
                        }
                    },
                )
            }
        }
    }
}

/// Compile-time checks spanned on the user's types, so that a return type
/// that cannot be sent is reported where it is written.
fn assertions(entrypoints: &[Entrypoint]) -> TokenStream {
    let checks = entrypoints.iter().map(|e| {
        let ok = &e.ok_type;
        let ok_check = match &e.kind {
            Kind::Rpc { .. } => {
                quote_spanned!(ok.span()=> ::rpc_core::__private::assert_result::<#ok>();)
            }
            _ => quote_spanned!(ok.span()=> ::rpc_core::__private::assert_unit::<#ok>();),
        };
        let err_check = e.err_type.as_ref().map(|err| match &e.kind {
            Kind::Rpc { .. } => {
                quote_spanned!(err.span()=> ::rpc_core::__private::assert_rpc_error::<#err>();)
            }
            _ => quote_spanned!(err.span()=> ::rpc_core::__private::assert_display::<#err>();),
        });
        let params = e.params.iter().map(|p| {
            let ty = &p.ty;
            quote_spanned!(ty.span()=> ::rpc_core::__private::assert_param::<#ty>();)
        });
        quote!(#ok_check #err_check #(#params)*)
    });
    quote! {
        #[allow(clippy::all)]
        const _: fn() = || { #(#checks)* };
    }
}

/// The local holding a timer's interval, worked out before `self` is
/// shared (so the expression may read the value: `interval = self.every`).
fn interval_ident(e: &Entrypoint) -> Ident {
    format_ident!("__rpc_interval_{}", e.sig.ident)
}

/// The builder method both forms share.
fn builder_fns(args: &ServiceArgs, entrypoints: &[Entrypoint], in_trait: bool) -> TokenStream {
    let name = &args.name;
    let registrations = entrypoints.iter().map(registration);
    let intervals = entrypoints.iter().filter_map(|e| match &e.kind {
        Kind::Timer { interval, .. } => {
            let ident = interval_ident(e);
            Some(quote_spanned! {interval.span()=>
                let #ident = ::rpc_core::__private::interval(#interval);
            })
        }
        _ => None,
    });
    let on_invalid = args
        .on_invalid_argument
        .as_ref()
        .map(|path| quote!(.on_invalid_argument(#path)));
    let sized = in_trait.then(|| quote!(where Self: ::core::marker::Sized));
    let vis = (!in_trait).then(|| quote!(pub));
    quote! {
        /// The name this service runs under unless told otherwise (its
        /// queue is `rpc-{name}`).
        #vis const SERVICE_NAME: &'static str = #name;

        /// This value as a service named [`Self::SERVICE_NAME`], ready to
        /// run or spawn.
        #vis fn into_service(self) -> ::rpc_core::Service #sized {
            self.into_service_builder(Self::SERVICE_NAME).build()
        }

        /// This value's entrypoints on a service called `name` (a
        /// configured name, say), for further settings (observers,
        /// argument errors) before `build()`.
        #vis fn into_service_builder(self, name: &str) -> ::rpc_core::ServiceBuilder #sized {
            #(#intervals)*
            let __rpc_this = ::std::sync::Arc::new(self);
            ::rpc_core::Service::builder(name)
                #on_invalid
                #(#registrations)*
        }
    }
}

/// Names a client has of its own: a remote method cannot use them as its
/// Rust name (it can keep them as its wire name, `#[rpc(name = "new")]`).
const CLIENT_OWN: [&str; 2] = ["new", "for_service"];

/// Refuses remote methods whose client methods would collide.
fn check_client_names(entrypoints: &[Entrypoint]) -> syn::Result<()> {
    let mut taken: std::collections::HashSet<String> =
        CLIENT_OWN.iter().map(|s| (*s).to_owned()).collect();
    let mut errors = None;
    for e in entrypoints
        .iter()
        .filter(|e| matches!(e.kind, Kind::Rpc { .. }))
    {
        let name = e.sig.ident.to_string();
        let plain = name.trim_start_matches("r#");
        for candidate in [plain.to_owned(), format!("{plain}_async")] {
            if !taken.insert(candidate.clone()) {
                combine(
                    &mut errors,
                    Error::new(
                        e.sig.ident.span(),
                        format!(
                            "the typed client would have two methods called `{candidate}`; rename this method and keep its name on the wire with #[rpc(name = \"{plain}\")]"
                        ),
                    ),
                );
            }
        }
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The typed client of a service's RPC methods.
fn client(
    service: &LitStr,
    client_name: &Ident,
    vis: &Visibility,
    entrypoints: &[Entrypoint],
) -> TokenStream {
    let methods = entrypoints.iter().filter_map(|e| {
        let Kind::Rpc { wire_name } = &e.kind else {
            return None;
        };
        let docs = &e.docs;
        let name = &e.sig.ident;
        let async_name = format_ident!("{}_async", name.to_string().trim_start_matches("r#"));
        let ok = &e.ok_type;
        // The client decodes the result: a result type that cannot be
        // deserialised is reported at the method's return type.
        let result_fn = Ident::new("result", ok.span());
        let params: Vec<TokenStream> = e
            .params
            .iter()
            .map(|p| {
                let ident = &p.ident;
                let ty = p.client_type();
                quote!(#ident: #ty)
            })
            .collect();
        let idents: Vec<&Ident> = e.params.iter().map(|p| &p.ident).collect();
        let pushes = e.params.iter().map(|p| {
            let ident = &p.ident;
            let wire = &p.wire_name;
            if p.optional() {
                quote!(.optional(#wire, ::core::option::Option::as_ref(&#ident))?)
            } else {
                quote!(.required(#wire, &#ident)?)
            }
        });
        Some(quote! {
            #(#docs)*
            pub async fn #name(&self, #(#params),*) -> ::core::result::Result<#ok, ::rpc_core::CallError> {
                self.#async_name(#(#idents),*).await?.#result_fn().await
            }

            #[doc = concat!("Publishes `", #wire_name, "` and returns at once; collect the result from the [`PendingCall`](::rpc_core::PendingCall).")]
            pub async fn #async_name(&self, #(#params),*) -> ::core::result::Result<::rpc_core::PendingCall<#ok>, ::rpc_core::CallError> {
                let args = ::rpc_core::CallArgs::new() #(#pushes)* .finish();
                let pending = ::rpc_core::Caller::call_async(&self.caller, &self.service, #wire_name, args).await?;
                ::core::result::Result::Ok(pending.typed())
            }
        })
    });
    let doc = format!(
        "Typed client of the `{}` service: one method per RPC method, taking the same parameters (those with a default are `Option`s, left out when `None`), and an `_async` variant of each.\n\nMade with any [`Caller`](::rpc_core::Caller): an [`RpcProxy`](::rpc_core::RpcProxy), or `ctx.rpc()` inside a handler so that the call carries its context.",
        service.value()
    );
    quote! {
        #[doc = #doc]
        #[derive(Clone, Debug)]
        #vis struct #client_name<C> {
            caller: C,
            service: ::std::string::String,
        }

        #[allow(private_interfaces, clippy::too_many_arguments)]
        impl<C: ::rpc_core::Caller> #client_name<C> {
            /// A client of the service under its own name.
            pub fn new(caller: C) -> Self {
                Self::for_service(caller, #service)
            }

            /// A client of the same service running under another name.
            pub fn for_service(caller: C, service: &str) -> Self {
                #client_name {
                    caller,
                    service: ::std::borrow::ToOwned::to_owned(service),
                }
            }

            #(#methods)*
        }
    }
}

/// `#[service]` on an impl block.
pub fn service_impl(args: ServiceArgs, mut item: ItemImpl) -> syn::Result<TokenStream> {
    if let Some((_, path, _)) = &item.trait_ {
        return Err(Error::new(
            path.span(),
            "#[rpc_core::service] goes on the service's own `impl Type` block, or on a trait that defines the service",
        ));
    }
    let self_ty = (*item.self_ty).clone();
    let entrypoints = entrypoints(
        item.items.iter_mut().filter_map(|i| match i {
            ImplItem::Fn(f) => Some((&mut f.attrs, &mut f.sig)),
            _ => None,
        }),
        Form::Service,
        false,
    )?;
    check_client_names(&entrypoints)?;
    let type_name = match &self_ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    }
    .ok_or_else(|| Error::new(self_ty.span(), "expected the service's type name"))?;
    let client_name = args
        .client
        .clone()
        .unwrap_or_else(|| format_ident!("{}Client", type_name));
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let mut where_clause = where_clause
        .cloned()
        .unwrap_or_else(|| syn::parse_quote!(where));
    where_clause
        .predicates
        .push(syn::parse_quote!(Self: ::core::marker::Send + ::core::marker::Sync + 'static));
    let builder = builder_fns(&args, &entrypoints, false);
    // The checks stand outside the impl, where its generics are not in
    // scope; a generic service is left to the builder's own bounds.
    let assertions = if item.generics.params.is_empty() {
        assertions(&entrypoints)
    } else {
        TokenStream::new()
    };
    let client = client(
        &args.name,
        &client_name,
        &syn::parse_quote!(pub),
        &entrypoints,
    );
    Ok(quote! {
        #item

        impl #impl_generics #self_ty #where_clause {
            #builder
        }

        #assertions

        #client
    })
}

/// `#[service]` on a trait: the trait, with provided `into_service*`
/// methods, and the client.
pub fn service_trait(args: ServiceArgs, mut item: ItemTrait) -> syn::Result<TokenStream> {
    let entrypoints = entrypoints(
        item.items.iter_mut().filter_map(|i| match i {
            TraitItem::Fn(f) => Some((&mut f.attrs, &mut f.sig)),
            _ => None,
        }),
        Form::Service,
        false,
    )?;
    check_client_names(&entrypoints)?;
    // The handlers' futures must be `Send` (they run on a multi-threaded
    // runtime), which `async fn` in a trait does not promise: declare them
    // as functions returning `impl Future + Send`. An implementation still
    // writes `async fn`.
    for trait_item in &mut item.items {
        let TraitItem::Fn(f) = trait_item else {
            continue;
        };
        if f.sig.asyncness.is_none() {
            continue;
        }
        let is_entrypoint = entrypoints.iter().any(|e| e.sig.ident == f.sig.ident);
        if !is_entrypoint {
            continue;
        }
        f.sig.asyncness = None;
        let output = match &f.sig.output {
            syn::ReturnType::Default => quote!(()),
            syn::ReturnType::Type(_, ty) => ty.to_token_stream(),
        };
        f.sig.output = syn::parse_quote!(-> impl ::core::future::Future<Output = #output> + ::core::marker::Send);
        if let Some(body) = f.default.take() {
            f.default = Some(syn::parse_quote!({ async move #body }));
        }
    }
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Send));
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Sync));
    item.supertraits.push(syn::parse_quote!('static));
    let builder = builder_fns(&args, &entrypoints, true);
    let builder_items: Vec<TraitItem> = {
        let file: syn::ItemTrait = syn::parse_quote!(trait __RpcBuilder { #builder });
        file.items
    };
    item.items.extend(builder_items);
    let client_name = args
        .client
        .clone()
        .unwrap_or_else(|| format_ident!("{}Client", item.ident));
    let assertions = assertions(&entrypoints);
    let client =
        (!args.no_client).then(|| client(&args.name, &client_name, &item.vis, &entrypoints));
    Ok(quote! {
        #item

        #assertions

        #client
    })
}

/// `#[client]` on a trait: only the client (the trait describes a service
/// written elsewhere).
pub fn client_trait(args: ServiceArgs, mut item: ItemTrait) -> syn::Result<TokenStream> {
    let entrypoints = entrypoints(
        item.items.iter_mut().filter_map(|i| match i {
            TraitItem::Fn(f) => Some((&mut f.attrs, &mut f.sig)),
            _ => None,
        }),
        Form::Client,
        true,
    )?;
    check_client_names(&entrypoints)?;
    for trait_item in &item.items {
        if !matches!(trait_item, TraitItem::Fn(_)) {
            return Err(Error::new(
                trait_item.span(),
                "a client trait lists the remote methods only",
            ));
        }
    }
    let client_name = args
        .client
        .clone()
        .unwrap_or_else(|| format_ident!("{}Client", item.ident));
    Ok(client(&args.name, &client_name, &item.vis, &entrypoints))
}
