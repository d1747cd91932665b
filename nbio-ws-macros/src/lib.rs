//! Procedural macros for nbio-ws. Use them through `nbio_ws::rpc_method`.
extern crate proc_macro;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, Path, ReturnType, Token};

struct Args {
    name: LitStr,
    krate: Path,
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(syn::Error::new(
                Span::call_site(),
                "#[rpc_method] needs the method name: #[rpc_method(\"name\")]",
            ));
        }
        let name: LitStr = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "the method name must be a string literal: #[rpc_method(\"name\")]",
            )
        })?;
        if name.value().is_empty() {
            return Err(syn::Error::new(
                name.span(),
                "the method name must not be empty",
            ));
        }
        let mut krate: Path = syn::parse_quote!(::nbio_ws);
        while input.peek(Token![,]) {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let key: syn::Ident = input.call(syn::ext::IdentExt::parse_any)?;
            if key != "crate" {
                return Err(syn::Error::new(
                    key.span(),
                    "unknown option; the only option is `crate = \"path\"`",
                ));
            }
            input.parse::<Token![=]>()?;
            krate = if input.peek(LitStr) {
                input.parse::<LitStr>()?.parse()?
            } else {
                input.parse()?
            };
        }
        Ok(Args { name, krate })
    }
}

/// Registers a free function as a JSON-RPC method, at compile time.
///
/// ```ignore
/// use nbio_ws::{rpc_method, Client, Params, RpcError};
///
/// #[derive(serde::Deserialize)]
/// struct Text { text: String }
///
/// #[rpc_method("self.reply")]
/// async fn self_reply(Params(p): Params<Text>, client: Client) -> Result<String, RpcError> {
///     Ok(format!("{} says {}", client.id(), p.text))
/// }
/// ```
///
/// - The function may be `async` or not.
/// - Every argument is an extractor: a type implementing
///   `nbio_ws::FromRequest` (`Params<T>`, `Client`, `Hub`, `State<T>` or your
///   own). Any pattern may bind it.
/// - It returns `Result<T, E>` (`T: Serialize`, `E: Into<RpcError>`) or any
///   `T: Serialize` (including `()`, answered as `null`).
/// - The function stays as written and can still be called directly. The
///   attribute adds a hidden wrapper and submits it to a registry (the
///   `inventory` crate) that `ServerBuilder::build` reads: every annotated
///   function linked into the binary is served, whatever crate it is in.
/// - `#[rpc_method("name", crate = "path")]` names the nbio-ws crate when it
///   was renamed in Cargo.toml.
///
/// Wrong uses are compile errors pointing at the offending code: a missing,
/// non-string or empty name; methods (`self`); generic functions; `impl
/// Trait` arguments; an argument that is not an extractor; a return type
/// that is not serializable.
#[proc_macro_attribute]
pub fn rpc_method(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = match syn::parse::<Args>(attr) {
        Ok(a) => a,
        Err(e) => return e.to_compile_error().into(),
    };
    let func = match syn::parse::<ItemFn>(item) {
        Ok(f) => f,
        Err(e) => {
            return syn::Error::new(
                e.span(),
                "#[rpc_method] applies to a free function (fn or async fn)",
            )
            .to_compile_error()
            .into()
        }
    };
    match expand(args, func) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(args: Args, func: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "an #[rpc_method] function cannot be generic: the registry needs one concrete function",
        ));
    }
    if let Some(wc) = &sig.generics.where_clause {
        return Err(syn::Error::new(
            wc.span(),
            "an #[rpc_method] function cannot have a where clause",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(
            v.span(),
            "an #[rpc_method] function cannot be variadic",
        ));
    }
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(
            c.span(),
            "an #[rpc_method] function cannot be `const`",
        ));
    }
    if let Some(u) = &sig.unsafety {
        return Err(syn::Error::new(
            u.span(),
            "an #[rpc_method] function cannot be `unsafe`",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new(
            abi.span(),
            "an #[rpc_method] function cannot have an `extern` ABI",
        ));
    }

    let krate = &args.krate;
    let name = &args.name;
    let ident = &sig.ident;
    let wrapper = format_ident!("__nbio_ws_rpc_{}", ident);

    let mut extracts = Vec::new();
    let mut call_args = Vec::new();
    for (i, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "#[rpc_method] applies to free functions, not methods taking `self`",
                ))
            }
            FnArg::Typed(pt) => {
                let ty = &pt.ty;
                if contains_impl_trait(ty) {
                    return Err(syn::Error::new(
                        ty.span(),
                        "`impl Trait` arguments are not allowed in an #[rpc_method] function: name a concrete extractor type",
                    ));
                }
                let var = format_ident!("__nbio_ws_arg{}", i);
                extracts.push(quote_spanned! {ty.span()=>
                    let #var = match #krate::__private::extract::<#ty>(&__nbio_ws_ctx) {
                        ::core::result::Result::Ok(v) => v,
                        ::core::result::Result::Err(e) => {
                            return ::std::boxed::Box::pin(::core::future::ready(::core::result::Result::Err(e)));
                        }
                    };
                });
                call_args.push(var);
            }
        }
    }

    let call = if sig.asyncness.is_some() {
        quote! { #ident(#(#call_args),*).await }
    } else {
        quote! { #ident(#(#call_args),*) }
    };
    let ret_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let convert = quote_spanned! {ret_span=>
        (&__nbio_ws_out).__nbio_ws_kind().convert(__nbio_ws_out)
    };
    let boxed = quote_spanned! {sig.fn_token.span()=>
        ::std::boxed::Box::pin(async move {
            let __nbio_ws_out = #call;
            #[allow(unused_imports)]
            use #krate::__private::{ResultKind as _, SerializeKind as _};
            #convert
        })
    };

    Ok(quote! {
        #func

        #[doc(hidden)]
        const _: () = {
            #[allow(non_snake_case, unused_variables)]
            fn #wrapper(
                __nbio_ws_ctx: #krate::__private::RequestContext,
            ) -> #krate::__private::BoxFuture<#krate::__private::HandlerResult> {
                #(#extracts)*
                #boxed
            }
            #krate::__private::inventory::submit! {
                #krate::__private::MethodDef::new(
                    #name,
                    #wrapper,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                )
            }
        };
    })
}

fn contains_impl_trait(ty: &syn::Type) -> bool {
    struct Finder(bool);
    impl<'a> syn::visit::Visit<'a> for Finder {
        fn visit_type_impl_trait(&mut self, _: &'a syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut f = Finder(false);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}
